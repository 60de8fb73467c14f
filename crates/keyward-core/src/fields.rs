//! Personal-data fields: what a value of each type must look like, the form its blind index is computed
//! over, and how it is masked for display. Pure functions with no key in sight: the engine (`protect.rs`)
//! adds the cryptography, so every rule here is testable on its own and written once for every front end.

use crate::error::{KmsError, KmsResult};

/// The kinds of personal data Keyward knows the shape of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FieldType {
    /// A Chinese mobile number (11 digits, `1[3-9]…`) or an E.164 number (`+` and 8 to 15 digits).
    Phone,
    /// An 18-character resident identity card number of the PRC (GB 11643), check character validated.
    IdCardCn,
    /// A payment card number (12 to 19 digits, Luhn validated; spaces and hyphens are ignored).
    BankCard,
    /// An email address.
    Email,
    /// A person's name, in Chinese or Latin script.
    Name,
    /// A postal address.
    Address,
    /// Any other text.
    Text,
    /// A string of decimal digits.
    Digits,
    /// A string of lower-case letters and digits.
    Alnum,
}

impl FieldType {
    /// Every type, in the order the API documents them.
    pub const ALL: &'static [FieldType] = &[
        FieldType::Phone,
        FieldType::IdCardCn,
        FieldType::BankCard,
        FieldType::Email,
        FieldType::Name,
        FieldType::Address,
        FieldType::Text,
        FieldType::Digits,
        FieldType::Alnum,
    ];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            FieldType::Phone => "phone",
            FieldType::IdCardCn => "id_card_cn",
            FieldType::BankCard => "bank_card",
            FieldType::Email => "email",
            FieldType::Name => "name",
            FieldType::Address => "address",
            FieldType::Text => "text",
            FieldType::Digits => "digits",
            FieldType::Alnum => "alnum",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<FieldType> {
        FieldType::ALL.iter().copied().find(|t| t.as_str() == s)
    }
}

/// The longest value a field may hold, in bytes: fields are database columns, not documents.
pub const MAX_FIELD_LEN: usize = 4096;

/// A refusal that names the type and never the value (it is personal data).
fn invalid(t: FieldType, why: &str) -> KmsError {
    KmsError::validation(format!("not a valid {}: {why}", t.as_str()))
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The GB 11643 check character of the first 17 digits of a resident ID (ISO 7064 MOD 11-2).
fn id_card_check(first17: &[u8]) -> u8 {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const CHECK: &[u8; 11] = b"10X98765432";
    let sum: u32 = first17
        .iter()
        .zip(WEIGHTS)
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    CHECK[(sum % 11) as usize]
}

/// Whether a digit string passes the Luhn check.
fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let v = u32::from(d - b'0');
            if i % 2 == 1 {
                let twice = v * 2;
                if twice > 9 {
                    twice - 9
                } else {
                    twice
                }
            } else {
                v
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Checks a value against its type and returns the normal form its blind index is computed over: digits
/// only for phones and cards, upper-case check character for ID cards, lower case for email, trimmed and
/// with inner runs of white space collapsed for text. Two spellings of one value give one normal form.
pub fn normalize(t: FieldType, value: &str) -> KmsResult<String> {
    if value.len() > MAX_FIELD_LEN {
        return Err(invalid(t, "longer than 4096 bytes"));
    }
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(invalid(t, "empty"));
    }
    match t {
        FieldType::Phone => {
            let compact: String = trimmed
                .chars()
                .filter(|c| !matches!(c, ' ' | '-' | '(' | ')'))
                .collect();
            if let Some(rest) = compact.strip_prefix('+') {
                if all_digits(rest) && (8..=15).contains(&rest.len()) && !rest.starts_with('0') {
                    return Ok(format!("+{rest}"));
                }
                return Err(invalid(t, "an E.164 number is + and 8 to 15 digits"));
            }
            let b = compact.as_bytes();
            if all_digits(&compact)
                && b.len() == 11
                && b[0] == b'1'
                && (b'3'..=b'9').contains(&b[1])
            {
                return Ok(compact);
            }
            Err(invalid(
                t,
                "a mobile number is 11 digits starting 13 to 19, or E.164 with +",
            ))
        }
        FieldType::IdCardCn => {
            let upper = trimmed.to_ascii_uppercase();
            let b = upper.as_bytes();
            if b.len() != 18 || !all_digits(&upper[..17]) {
                return Err(invalid(t, "18 characters: 17 digits and a check character"));
            }
            if b[17] != id_card_check(&b[..17]) {
                return Err(invalid(t, "the check character does not match"));
            }
            Ok(upper)
        }
        FieldType::BankCard => {
            let digits: String = trimmed
                .chars()
                .filter(|c| !matches!(c, ' ' | '-'))
                .collect();
            if !all_digits(&digits) || !(12..=19).contains(&digits.len()) {
                return Err(invalid(t, "12 to 19 digits"));
            }
            if !luhn(digits.as_bytes()) {
                return Err(invalid(t, "the Luhn check digit does not match"));
            }
            Ok(digits)
        }
        FieldType::Email => {
            let lower = trimmed.to_lowercase();
            let (local, domain) = lower.split_once('@').ok_or_else(|| invalid(t, "no @"))?;
            let ok = !local.is_empty()
                && local.len() <= 64
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && lower.len() <= 254
                && !lower.chars().any(|c| c.is_whitespace() || c.is_control());
            if !ok {
                return Err(invalid(t, "not local@domain"));
            }
            Ok(lower)
        }
        FieldType::Name | FieldType::Address | FieldType::Text => {
            if trimmed.chars().any(char::is_control) {
                return Err(invalid(t, "control characters"));
            }
            Ok(trimmed.split_whitespace().collect::<Vec<_>>().join(" "))
        }
        FieldType::Digits => {
            if !all_digits(trimmed) {
                return Err(invalid(t, "decimal digits only"));
            }
            Ok(trimmed.to_string())
        }
        FieldType::Alnum => {
            if !trimmed
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
            {
                return Err(invalid(t, "lower-case letters and digits only"));
            }
            Ok(trimmed.to_string())
        }
    }
}

/// How much of a value a mask shows: the characters kept at either end, and the character that hides the
/// rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaskRule {
    /// Characters shown at the start.
    pub keep_first: usize,
    /// Characters shown at the end.
    pub keep_last: usize,
    /// What hides the others.
    pub mask_char: char,
}

/// A mask a caller chose: hides all but `keep_first` and `keep_last` characters, and at least half of the
/// value whatever the rule asks, so that no request can turn a mask into the value.
pub fn mask_with(value: &str, rule: MaskRule) -> String {
    let n = value.chars().count();
    let first = rule.keep_first.min(n / 2);
    let last = rule.keep_last.min(n / 2 - first);
    keep(value, first, last, rule.mask_char)
}

/// Shows `first` and `last` characters and hides the rest; a value too short for both shows only its first
/// characters, and always hides at least one.
fn keep(value: &str, first: usize, last: usize, mask_char: char) -> String {
    let chars: Vec<char> = value.chars().collect();
    let n = chars.len();
    let (first, last) = if first + last < n {
        (first, last)
    } else {
        (first.min(n.saturating_sub(1) / 2), 0)
    };
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i < first || i >= n - last {
                *c
            } else {
                mask_char
            }
        })
        .collect()
}

/// Compound Chinese surnames: their two characters are shown, as the surname is.
const COMPOUND_SURNAMES: &[&str] = &[
    "欧阳", "司马", "上官", "诸葛", "东方", "皇甫", "尉迟", "公孙", "慕容", "长孙", "宇文", "司徒",
    "令狐", "夏侯", "轩辕", "端木", "独孤", "南宫", "西门", "百里", "呼延", "澹台", "公冶", "太史",
    "申屠", "赫连",
];

fn is_han(c: char) -> bool {
    matches!(c, '\u{4e00}'..='\u{9fff}' | '\u{3400}'..='\u{4dbf}')
}

/// The display form of a normalised value, by the usual rule for its type: phone `138****5678`, card the
/// first 6 and last 4 at most (PCI DSS 3.4), ID card its region code and last 4, email the first character
/// and the domain, a Chinese name its surname (`张*`, `欧阳**`), a Latin name its initials, an address up to
/// its district, other text its first and last character.
pub fn mask(t: FieldType, normal: &str) -> String {
    let rule = |first, last| keep(normal, first, last, '*');
    match t {
        FieldType::Phone => match normal.strip_prefix('+') {
            Some(rest) => format!("+{}", keep(rest, 3, 4, '*')),
            None => rule(3, 4),
        },
        FieldType::BankCard => {
            // The first six and last four at most, and at least six digits hidden on shorter cards.
            let shown = normal.len().saturating_sub(6).min(10);
            let last = shown.min(4);
            rule(shown - last, last)
        }
        FieldType::IdCardCn => rule(6, 4),
        FieldType::Email => match normal.split_once('@') {
            Some((local, domain)) => {
                let first: String = local.chars().take(1).collect();
                format!("{first}***@{domain}")
            }
            None => rule(1, 0),
        },
        FieldType::Name => {
            if normal.chars().any(is_han) {
                let surname = COMPOUND_SURNAMES
                    .iter()
                    .find(|s| normal.starts_with(*s) && normal.chars().count() > 2)
                    .map_or(1, |_| 2);
                let shown: String = normal.chars().take(surname).collect();
                let hidden = normal.chars().count() - surname;
                format!("{shown}{}", "*".repeat(hidden.max(1)))
            } else {
                normal
                    .split(' ')
                    .map(|w| {
                        let mut cs = w.chars();
                        match cs.next() {
                            Some(c) => format!("{c}{}", "*".repeat(cs.count().max(1))),
                            None => String::new(),
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        }
        FieldType::Address => {
            let chars: Vec<char> = normal.chars().collect();
            // Up to the district (区) or county (县); without one, up to the city (市); else the first third.
            let cut = ['区', '县']
                .iter()
                .find_map(|m| chars.iter().position(|c| c == m))
                .or_else(|| chars.iter().position(|c| *c == '市'))
                .map(|i| i + 1)
                .filter(|i| *i < chars.len())
                .unwrap_or(chars.len() / 3);
            let shown: String = chars[..cut].iter().collect();
            format!("{shown}****")
        }
        FieldType::Text => rule(1, 1),
        FieldType::Digits | FieldType::Alnum => rule(0, 4),
    }
}

/// FF1's smallest domain (NIST SP 800-38G Rev. 1): radix^length at least one million.
fn fpe_min_len(radix: u32) -> usize {
    if radix == 10 {
        6
    } else {
        4
    }
}

const ALNUM: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

fn to_numerals(s: &str) -> Vec<u16> {
    s.bytes()
        .map(|b| match b {
            b'0'..=b'9' => u16::from(b - b'0'),
            _ => u16::from(b - b'a') + 10,
        })
        .collect()
}

fn push_numerals(out: &mut String, n: &[u16]) {
    out.extend(n.iter().map(|d| char::from(ALNUM[usize::from(*d) % 36])));
}

/// Which numerals a format-preserving result may take: all, or those that keep a card number's Luhn digit
/// valid (the HSM cycle-walks until the result is accepted).
pub type Accept<'a> = &'a dyn Fn(&[u16]) -> bool;

/// The format-preserving form of a value (its normal form, as [`normalize`] gives it), or the value back
/// from that form: `ff1(radix, numerals, accept)` is the keyed permutation restricted to what `accept`
/// allows (the HSM's FF1 encryption with cycle walking in one direction, its decryption in the other). This
/// function decides what it permutes, so each type keeps its shape and its check digits:
///
/// - `digits` (radix 10, at least 6) and `alnum` (radix 36, at least 4) are permuted whole;
/// - a Chinese mobile keeps its first three digits (the network prefix the mask shows too) and permutes
///   the other eight; an E.164 number keeps `+` and two digits;
/// - a bank card keeps its first six digits (the BIN) and its last four, and permutes the digits between
///   them, cycle walking until the whole number passes Luhn; numbers under 16 digits keep fewer leading
///   digits so that six are always permuted;
/// - an ID card keeps its region code (six digits), permutes the eleven digits of birth date and sequence
///   number, and gets the check character of the result (the birth date need not stay a date).
///
/// Other types have no format to preserve and are refused.
pub fn format_preserving(
    t: FieldType,
    normal: &str,
    mut ff1: impl FnMut(u32, &[u16], Accept<'_>) -> KmsResult<Vec<u16>>,
) -> KmsResult<String> {
    let all = |_: &[u16]| true;
    let mut out = String::with_capacity(normal.len());
    match t {
        FieldType::Digits | FieldType::Alnum => {
            let radix = if t == FieldType::Digits { 10 } else { 36 };
            if normal.len() < fpe_min_len(radix) {
                return Err(invalid(
                    t,
                    &format!(
                        "format-preserving encryption needs at least {} characters",
                        fpe_min_len(radix)
                    ),
                ));
            }
            push_numerals(&mut out, &ff1(radix, &to_numerals(normal), &all)?);
        }
        FieldType::Phone => {
            // "138…" or "+49…": three characters either way, eight or at least six digits after them.
            let (head, tail) = normal.split_at(3);
            out.push_str(head);
            push_numerals(&mut out, &ff1(10, &to_numerals(tail), &all)?);
        }
        FieldType::IdCardCn => {
            out.push_str(&normal[..6]);
            push_numerals(&mut out, &ff1(10, &to_numerals(&normal[6..17]), &all)?);
            let check = id_card_check(out.as_bytes());
            out.push(char::from(check));
        }
        FieldType::BankCard => {
            let n = normal.len();
            let kept = 6.min(n - 10);
            let (head, rest) = normal.split_at(kept);
            let (middle, last4) = rest.split_at(rest.len() - 4);
            let valid = |n: &[u16]| {
                let mut candidate = Vec::with_capacity(head.len() + n.len() + 4);
                candidate.extend_from_slice(head.as_bytes());
                candidate.extend(n.iter().map(|d| ALNUM[usize::from(*d) % 36]));
                candidate.extend_from_slice(last4.as_bytes());
                luhn(&candidate)
            };
            let numerals = ff1(10, &to_numerals(middle), &valid)?;
            out.push_str(head);
            push_numerals(&mut out, &numerals);
            out.push_str(last4);
        }
        FieldType::Email | FieldType::Name | FieldType::Address | FieldType::Text => {
            return Err(KmsError::validation(format!(
                "type {} has no format to preserve: protect it with mode encrypt or deterministic",
                t.as_str()
            )))
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(t: FieldType, v: &str) -> String {
        normalize(t, v).unwrap_or_else(|e| panic!("{v}: {}", e.message()))
    }

    #[test]
    fn phones_are_chinese_mobiles_or_e164() {
        assert_eq!(ok(FieldType::Phone, " 138-1234-5678 "), "13812345678");
        assert_eq!(ok(FieldType::Phone, "+49 (30) 1234567"), "+49301234567");
        for bad in [
            "12812345678",
            "1381234567",
            "+0123456789",
            "+12",
            "phone",
            "138123456789",
        ] {
            assert!(normalize(FieldType::Phone, bad).is_err(), "{bad}");
        }
        assert_eq!(mask(FieldType::Phone, "13812345678"), "138****5678");
        assert_eq!(mask(FieldType::Phone, "+49301234567"), "+493****4567");
    }

    #[test]
    fn id_cards_carry_a_valid_check_character() {
        // The GB 11643 example number and one ending in X.
        assert_eq!(
            ok(FieldType::IdCardCn, "11010519491231002x"),
            "11010519491231002X"
        );
        assert_eq!(
            ok(FieldType::IdCardCn, "440524188001010014"),
            "440524188001010014"
        );
        for bad in [
            "110105194912310021",
            "11010519491231002",
            "1101051949123100AX",
        ] {
            assert!(normalize(FieldType::IdCardCn, bad).is_err(), "{bad}");
        }
        assert_eq!(
            mask(FieldType::IdCardCn, "11010519491231002X"),
            "110105********002X"
        );
    }

    #[test]
    fn cards_pass_luhn_and_show_six_and_four_at_most() {
        assert_eq!(
            ok(FieldType::BankCard, "4111 1111 1111 1111"),
            "4111111111111111"
        );
        assert_eq!(
            ok(FieldType::BankCard, "6222-0212-3456-7890-128"),
            "6222021234567890128"
        );
        assert!(normalize(FieldType::BankCard, "4111111111111112").is_err());
        assert!(normalize(FieldType::BankCard, "41111111111").is_err());
        assert_eq!(
            mask(FieldType::BankCard, "4111111111111111"),
            "411111******1111"
        );
        assert_eq!(
            mask(FieldType::BankCard, "6222021234567890128"),
            "622202*********0128"
        );
        // A short card shows less, so that at least eight digits stay hidden.
        let short = mask(FieldType::BankCard, "378282246310005");
        assert_eq!(short, "37828******0005");
        assert_eq!(short.matches('*').count(), 6);
    }

    #[test]
    fn emails_lower_case_and_show_the_first_character_and_domain() {
        assert_eq!(
            ok(FieldType::Email, " Zhang.San@Example.COM "),
            "zhang.san@example.com"
        );
        for bad in [
            "no-at",
            "a@b",
            "@example.com",
            "a b@example.com",
            "a@@example.com",
            "a@example.",
        ] {
            assert!(normalize(FieldType::Email, bad).is_err(), "{bad}");
        }
        assert_eq!(
            mask(FieldType::Email, "zhang.san@example.com"),
            "z***@example.com"
        );
    }

    #[test]
    fn names_show_the_surname_or_initials() {
        assert_eq!(mask(FieldType::Name, "张三"), "张*");
        assert_eq!(mask(FieldType::Name, "张三丰"), "张**");
        assert_eq!(mask(FieldType::Name, "欧阳娜娜"), "欧阳**");
        assert_eq!(
            mask(FieldType::Name, "欧阳"),
            "欧*",
            "a two-character name is surname and given name"
        );
        assert_eq!(ok(FieldType::Name, "  John   Smith "), "John Smith");
        assert_eq!(mask(FieldType::Name, "John Smith"), "J*** S****");
        assert!(normalize(FieldType::Name, "a\u{0}b").is_err());
    }

    #[test]
    fn addresses_show_up_to_the_district() {
        assert_eq!(
            mask(FieldType::Address, "北京市朝阳区建国路88号"),
            "北京市朝阳区****"
        );
        assert_eq!(
            mask(FieldType::Address, "浙江省杭州市西湖路1号"),
            "浙江省杭州市****"
        );
        assert_eq!(
            mask(FieldType::Address, "1 Main Street, Springfield"),
            "1 Main S****"
        );
    }

    #[test]
    fn raw_alphabets_and_text() {
        assert_eq!(ok(FieldType::Digits, "0012345"), "0012345");
        assert!(normalize(FieldType::Digits, "12a").is_err());
        assert_eq!(ok(FieldType::Alnum, "a9tv40"), "a9tv40");
        assert!(normalize(FieldType::Alnum, "A9").is_err());
        assert_eq!(mask(FieldType::Digits, "0012345678"), "******5678");
        assert_eq!(mask(FieldType::Text, "secret"), "s****t");
        assert!(normalize(FieldType::Text, "   ").is_err());
        assert!(normalize(FieldType::Text, &"x".repeat(MAX_FIELD_LEN + 1)).is_err());
    }

    #[test]
    fn a_mask_never_shows_more_than_half_of_a_value() {
        let r = MaskRule {
            keep_first: 10,
            keep_last: 10,
            mask_char: '#',
        };
        assert_eq!(mask_with("abcd", r), "ab##");
        assert_eq!(mask_with("abcdefgh", r), "abcd####");
        assert_eq!(mask_with("a", r), "#");
        for t in FieldType::ALL {
            assert_eq!(FieldType::parse(t.as_str()), Some(*t));
        }
    }

    #[test]
    fn refusals_never_echo_the_value() {
        let e = normalize(FieldType::Email, "secret-person-at-example.com").unwrap_err();
        assert!(!e.message().contains("secret"), "{}", e.message());
    }

    /// A stand-in keyed permutation: each numeral shifted by a key-dependent amount, mod the radix, with
    /// the cycle walking the HSM does.
    fn shift(
        key: u16,
        forward: bool,
    ) -> impl FnMut(u32, &[u16], Accept<'_>) -> KmsResult<Vec<u16>> {
        move |radix, n, accept| {
            let r = radix as u16;
            let mut x = n.to_vec();
            loop {
                x = x
                    .iter()
                    .enumerate()
                    .map(|(i, d)| {
                        let k = (key + i as u16) % r;
                        if forward {
                            (d + k) % r
                        } else {
                            (d + r - k) % r
                        }
                    })
                    .collect();
                if accept(&x) {
                    return Ok(x);
                }
            }
        }
    }

    proptest::proptest! {
        /// Whatever the permutation, a card stays a valid card with its BIN and last four, an ID card keeps
        /// its region and gets a valid check character, and the inverse permutation gives the value back
        /// (cycle walking undone by walking back).
        #[test]
        fn format_preserving_keeps_shape_and_inverts(
            body in proptest::collection::vec(0u8..10, 11..18),
            id in proptest::collection::vec(0u8..10, 17),
            key in 1u16..1000,
        ) {
            let mut card: Vec<u8> = body.iter().map(|d| b'0' + d).collect();
            for check in b'0'..=b'9' {
                card.push(check);
                if luhn(&card) {
                    break;
                }
                card.pop();
            }
            let card = String::from_utf8(card).unwrap();
            let ct = format_preserving(FieldType::BankCard, &card, shift(key, true)).unwrap();
            proptest::prop_assert_eq!(normalize(FieldType::BankCard, &ct).unwrap(), ct.clone());
            proptest::prop_assert_eq!(&ct[ct.len() - 4..], &card[card.len() - 4..]);
            let kept = 6.min(card.len() - 10);
            proptest::prop_assert_eq!(&ct[..kept], &card[..kept]);
            let back = format_preserving(FieldType::BankCard, &ct, shift(key, false)).unwrap();
            proptest::prop_assert_eq!(back, card);

            let mut id: Vec<u8> = id.iter().map(|d| b'0' + d).collect();
            id.push(id_card_check(&id));
            let id = String::from_utf8(id).unwrap();
            let ct = format_preserving(FieldType::IdCardCn, &id, shift(key, true)).unwrap();
            proptest::prop_assert!(normalize(FieldType::IdCardCn, &ct).is_ok());
            proptest::prop_assert_eq!(&ct[..6], &id[..6]);
            let back = format_preserving(FieldType::IdCardCn, &ct, shift(key, false)).unwrap();
            proptest::prop_assert_eq!(back, id);
        }
    }

    #[test]
    fn format_preserving_refuses_small_domains_and_free_text() {
        for (t, v) in [
            (FieldType::Digits, "12345"),
            (FieldType::Alnum, "a1b"),
            (FieldType::Email, "a@example.com"),
            (FieldType::Text, "anything"),
        ] {
            let e = format_preserving(t, v, shift(1, true)).unwrap_err();
            assert_eq!(e.code(), crate::error::ErrorCode::ValidationError);
            assert!(!e.message().contains(v));
        }
        assert_eq!(
            format_preserving(FieldType::Alnum, "a1b2", shift(1, true)).unwrap(),
            "b3e6"
        );
    }
}
