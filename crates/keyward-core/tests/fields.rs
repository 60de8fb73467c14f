//! Field-level protection through the engine: ciphertext, mask and blind index per value, each item's own
//! refusal, indexes that survive rotation and differ across keys and types.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::harness;
use keyward_core::fields::FieldType;
use keyward_core::*;

fn item(value: &str, field: FieldType) -> FieldInput<'_> {
    FieldInput {
        mode: FieldMode::Encrypt,
        value,
        field,
        context: Context::new(),
        mask: None,
        tweak: None,
    }
}

fn sealed(ciphertext: &[u8], field: FieldType, context: Context) -> SealedField<'_> {
    SealedField {
        mode: FieldMode::Encrypt,
        ciphertext,
        field,
        context,
        tweak: None,
        version: None,
    }
}

#[test]
fn protect_gives_ciphertext_mask_and_index_and_unprotect_gives_the_value_back() {
    let h = harness();
    let kms = &h.kms;
    let key = kms
        .create_key(CreateKey::new(KeySpec::Aes256))
        .unwrap()
        .key_id;
    let items = [
        item("138-1234-5678", FieldType::Phone),
        item("4111 1111 1111 1111", FieldType::BankCard),
        item("Zhang.San@Example.com", FieldType::Email),
        item("11010519491231002X", FieldType::IdCardCn),
        item("欧阳娜娜", FieldType::Name),
        item("not a phone", FieldType::Phone),
    ];
    let out = kms.protect_fields(&key, &items).unwrap();
    let masks: Vec<_> = out[..5]
        .iter()
        .map(|r| r.as_ref().unwrap().masked.clone())
        .collect();
    assert_eq!(
        masks,
        [
            "138****5678",
            "411111******1111",
            "z***@example.com",
            "110105********002X",
            "欧阳**"
        ]
    );
    // The bad item alone fails, with the type named and the value not.
    let e = out[5].as_ref().unwrap_err();
    assert_eq!(e.code(), ErrorCode::ValidationError);
    assert!(e.message().contains("phone") && !e.message().contains("not a phone"));
    for r in &out[..5] {
        assert_eq!(
            r.as_ref().unwrap().blind_index.len(),
            8,
            "64 bits by default"
        );
    }

    // Unprotect gives back exactly what was protected, only under the type it was protected as.
    let p = out[0].as_ref().unwrap();
    let back = kms
        .unprotect_fields(
            &key,
            &[sealed(&p.ciphertext, FieldType::Phone, Context::new())],
        )
        .unwrap();
    assert_eq!(back[0].as_ref().unwrap(), "138-1234-5678");
    let wrong = kms
        .unprotect_fields(
            &key,
            &[sealed(&p.ciphertext, FieldType::Text, Context::new())],
        )
        .unwrap();
    assert_eq!(
        wrong[0].as_ref().unwrap_err().code(),
        ErrorCode::InvalidCiphertext
    );

    // The index of another spelling of the same number is the same, and survives rotation.
    kms.rotate_key(&key).unwrap();
    let search = kms
        .blind_indexes(&key, &[("13812345678", FieldType::Phone)])
        .unwrap();
    assert_eq!(search[0].as_ref().unwrap(), &p.blind_index);
    // Another type or another key: another index.
    let as_digits = kms
        .blind_indexes(&key, &[("13812345678", FieldType::Digits)])
        .unwrap();
    assert_ne!(as_digits[0].as_ref().unwrap(), &p.blind_index);
    let other = kms
        .create_key(CreateKey::new(KeySpec::Aes256))
        .unwrap()
        .key_id;
    let elsewhere = kms
        .blind_indexes(&other, &[("13812345678", FieldType::Phone)])
        .unwrap();
    assert_ne!(elsewhere[0].as_ref().unwrap(), &p.blind_index);
    // A ciphertext made before the rotation still unprotects.
    let back = kms
        .unprotect_fields(
            &key,
            &[sealed(&p.ciphertext, FieldType::Phone, Context::new())],
        )
        .unwrap();
    assert_eq!(back[0].as_ref().unwrap(), "138-1234-5678");
    // Under another key it does not.
    let refused = kms
        .unprotect_fields(
            &other,
            &[sealed(&p.ciphertext, FieldType::Phone, Context::new())],
        )
        .unwrap();
    assert!(refused[0].is_err());
}

#[test]
fn index_length_masks_and_refusals_follow_the_request_and_the_key() {
    let h = harness();
    let kms = &h.kms;
    let mut req = CreateKey::new(KeySpec::Aes256);
    req.blind_index_bits = Some(128);
    let key = kms.create_key(req).unwrap().key_id;
    assert_eq!(kms.describe_key(&key).unwrap().blind_index_bits, Some(128));
    let mut custom = item("13812345678", FieldType::Phone);
    custom.mask = Some(fields::MaskRule {
        keep_first: 0,
        keep_last: 11,
        mask_char: '#',
    });
    custom.context.insert("tenant".into(), "a".into());
    let out = kms.protect_fields(&key, &[custom]).unwrap();
    let p = out[0].as_ref().unwrap();
    assert_eq!(p.blind_index.len(), 16);
    assert_eq!(p.masked, "######45678", "a requested mask still hides half");
    // The context is bound: without it, nothing.
    let bare = kms
        .unprotect_fields(
            &key,
            &[sealed(&p.ciphertext, FieldType::Phone, Context::new())],
        )
        .unwrap();
    assert_eq!(
        bare[0].as_ref().unwrap_err().code(),
        ErrorCode::InvalidCiphertext
    );

    let code = |r: KmsResult<u32>| r.unwrap_err().code();
    for bits in [8, 12, 264] {
        let mut req = CreateKey::new(KeySpec::Aes256);
        req.blind_index_bits = Some(bits);
        assert_eq!(
            code(kms.create_key(req).map(|_| 0)),
            ErrorCode::ValidationError
        );
    }
    let mut req = CreateKey::new(KeySpec::EccNistP256);
    req.blind_index_bits = Some(64);
    assert_eq!(
        code(kms.create_key(req).map(|_| 0)),
        ErrorCode::IncorrectKeyUsage
    );
    // Keys of field protection are AES or SM4 keys; items are 1 to 1000; the field context key is reserved.
    let hmac = kms.create_key(CreateKey::new(KeySpec::Hmac256)).unwrap();
    let r = kms.protect_fields(&hmac.key_id, &[item("1", FieldType::Digits)]);
    assert_eq!(code(r.map(|_| 0)), ErrorCode::IncorrectKeyUsage);
    let none: [FieldInput<'_>; 0] = [];
    assert_eq!(
        code(kms.protect_fields(&key, &none).map(|_| 0)),
        ErrorCode::ValidationError
    );
    let many = vec![item("1", FieldType::Digits); MAX_FIELD_ITEMS + 1];
    assert_eq!(
        code(kms.protect_fields(&key, &many).map(|_| 0)),
        ErrorCode::ValidationError
    );
    let mut reserved = item("1", FieldType::Digits);
    reserved
        .context
        .insert(FIELD_CONTEXT_KEY.into(), "phone".into());
    let r = kms.protect_fields(&key, &[reserved]).unwrap();
    assert_eq!(
        r[0].as_ref().unwrap_err().code(),
        ErrorCode::ValidationError
    );
}

#[test]
fn deterministic_fields_are_equal_for_equal_values_and_open_like_the_others() {
    let h = harness();
    let kms = &h.kms;
    let key = kms
        .create_key(CreateKey::new(KeySpec::Aes256))
        .unwrap()
        .key_id;
    let det = |value: &str, ctx: &[(&str, &str)]| {
        let mut i = item(value, FieldType::Email);
        i.mode = FieldMode::Deterministic;
        i.context = ctx
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        kms.protect_fields(&key, &[i]).unwrap().remove(0)
    };
    let a = det("a@example.com", &[]);
    if keyward_hsm_soft::FIPS_BUILD {
        assert_eq!(a.unwrap_err().code(), ErrorCode::IncorrectKeyUsage);
        return;
    }
    let a = a.unwrap();
    assert_eq!(a.ciphertext, det("a@example.com", &[]).unwrap().ciphertext);
    assert_ne!(a.ciphertext, det("b@example.com", &[]).unwrap().ciphertext);
    assert_ne!(
        a.ciphertext,
        det("a@example.com", &[("t", "x")]).unwrap().ciphertext
    );
    // The exact value comes back, and only as its type; a flipped bit is refused.
    let open = |ct: &[u8], t| {
        kms.unprotect_fields(&key, &[sealed(ct, t, Context::new())])
            .unwrap()
            .remove(0)
    };
    assert_eq!(
        open(&a.ciphertext, FieldType::Email).unwrap(),
        "a@example.com"
    );
    assert!(open(&a.ciphertext, FieldType::Text).is_err());
    let mut bad = a.ciphertext.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert_eq!(
        open(&bad, FieldType::Email).unwrap_err().code(),
        ErrorCode::InvalidCiphertext
    );
    // A new version gives new ciphertexts; the old ones still open.
    kms.rotate_key(&key).unwrap();
    let after = det("a@example.com", &[]).unwrap();
    assert_ne!(after.ciphertext, a.ciphertext);
    assert_eq!(after.blind_index, a.blind_index);
    assert_eq!(
        open(&a.ciphertext, FieldType::Email).unwrap(),
        "a@example.com"
    );
}

#[test]
fn debug_prints_never_show_a_value() {
    let i = item("13812345678", FieldType::Phone);
    let shown = format!("{i:?}");
    assert!(
        !shown.contains("13812345678") && shown.contains("Phone"),
        "{shown}"
    );
}

#[test]
fn sm4_keys_protect_with_sm4_gcm_and_index_with_hmac_sm3() {
    let h = harness();
    let kms = &h.kms;
    let sm4 = match kms.create_key(CreateKey::new(KeySpec::Sm4)) {
        Ok(k) => k.key_id,
        Err(e) => {
            if keyward_hsm_soft::FIPS_BUILD {
                return;
            }
            panic!("{}", e.message());
        }
    };
    let aes = kms
        .create_key(CreateKey::new(KeySpec::Aes256))
        .unwrap()
        .key_id;
    let p = kms
        .protect_fields(&sm4, &[item("13812345678", FieldType::Phone)])
        .unwrap()
        .remove(0)
        .unwrap();
    assert_eq!(p.masked, "138****5678");
    assert_eq!(p.blind_index.len(), 8);
    let back = kms
        .unprotect_fields(
            &sm4,
            &[sealed(&p.ciphertext, FieldType::Phone, Context::new())],
        )
        .unwrap()
        .remove(0)
        .unwrap();
    assert_eq!(back, "13812345678");
    // The index is the SM4 key's own: stable, searchable, and unlike an AES key's.
    let search = kms
        .blind_indexes(&sm4, &[("138 1234 5678", FieldType::Phone)])
        .unwrap()
        .remove(0)
        .unwrap();
    assert_eq!(search, p.blind_index);
    let other = kms
        .blind_indexes(&aes, &[("13812345678", FieldType::Phone)])
        .unwrap()
        .remove(0)
        .unwrap();
    assert_ne!(other, p.blind_index);
    // AES-SIV and FF1 are AES modes: refused for SM4 keys, by item.
    for mode in [FieldMode::Deterministic, FieldMode::Fpe] {
        let mut i = item("13812345678", FieldType::Phone);
        i.mode = mode;
        let r = kms.protect_fields(&sm4, &[i]).unwrap().remove(0);
        assert_eq!(
            r.unwrap_err().code(),
            ErrorCode::IncorrectKeyUsage,
            "{mode:?}"
        );
    }
}

fn fpe_item<'a>(value: &'a str, field: FieldType) -> FieldInput<'a> {
    FieldInput {
        mode: FieldMode::Fpe,
        ..item(value, field)
    }
}

fn fpe_open(
    kms: &Kms,
    key: &str,
    ciphertext: &str,
    field: FieldType,
    version: Option<u32>,
    tweak: Option<&[u8]>,
) -> KmsResult<String> {
    kms.unprotect_fields(
        key,
        &[SealedField {
            mode: FieldMode::Fpe,
            ciphertext: ciphertext.as_bytes(),
            field,
            context: Context::new(),
            tweak,
            version,
        }],
    )?
    .remove(0)
}

/// A valid card number of `len` digits from a seed: random body, Luhn digit computed.
fn card(len: usize, seed: u64) -> String {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut digits: Vec<u32> = (0..len - 1)
        .map(|i| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let d = ((x >> 33) % 10) as u32;
            if i == 0 {
                4
            } else {
                d
            }
        })
        .collect();
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 0 {
                let t = d * 2;
                if t > 9 {
                    t - 9
                } else {
                    t
                }
            } else {
                *d
            }
        })
        .sum();
    digits.push((10 - sum % 10) % 10);
    digits
        .iter()
        .map(|d| char::from_digit(*d, 10).unwrap())
        .collect()
}

#[test]
fn fpe_keeps_each_types_format_and_check_digits_and_opens_with_its_version() {
    let h = harness();
    let kms = &h.kms;
    let key = kms
        .create_key(CreateKey::new(KeySpec::Aes256))
        .unwrap()
        .key_id;
    let first = kms
        .protect_fields(&key, &[fpe_item("13812345678", FieldType::Phone)])
        .unwrap()
        .remove(0);
    if keyward_hsm_soft::FIPS_BUILD {
        assert_eq!(first.unwrap_err().code(), ErrorCode::IncorrectKeyUsage);
        return;
    }
    let cases: Vec<(String, FieldType, usize)> = vec![
        ("13812345678".into(), FieldType::Phone, 3),
        ("+49 30 1234567".into(), FieldType::Phone, 3),
        ("11010519491231002X".into(), FieldType::IdCardCn, 6),
        (card(16, 1), FieldType::BankCard, 6),
        (card(19, 2), FieldType::BankCard, 6),
        (card(15, 3), FieldType::BankCard, 5),
        (card(12, 4), FieldType::BankCard, 2),
        ("0012345678901234".into(), FieldType::Digits, 0),
        ("k3x9q2".into(), FieldType::Alnum, 0),
    ];
    for (value, t, kept) in &cases {
        let normal = fields::normalize(*t, value).unwrap();
        let p = kms
            .protect_fields(&key, &[fpe_item(value, *t)])
            .unwrap()
            .remove(0)
            .unwrap();
        let ct = String::from_utf8(p.ciphertext.clone()).unwrap();
        assert_eq!(p.version, 1);
        // Same length, still a valid value of its type (Luhn, ID check character), prefix kept.
        assert_eq!(ct.len(), normal.len(), "{t:?}");
        assert_eq!(fields::normalize(*t, &ct).unwrap(), ct, "{t:?} {ct}");
        assert_eq!(ct[..*kept], normal[..*kept], "{t:?}");
        assert_ne!(ct, normal, "{t:?}");
        if *t == FieldType::BankCard {
            assert_eq!(
                ct[ct.len() - 4..],
                normal[normal.len() - 4..],
                "last four kept"
            );
        }
        // Deterministic per key version and tweak; the blind index is the value's, as in every mode.
        let again = kms
            .protect_fields(&key, &[fpe_item(value, *t)])
            .unwrap()
            .remove(0)
            .unwrap();
        assert_eq!(again.ciphertext, p.ciphertext);
        let enc = kms
            .protect_fields(&key, &[item(value, *t)])
            .unwrap()
            .remove(0)
            .unwrap();
        assert_eq!(enc.blind_index, p.blind_index);
        assert_eq!(enc.masked, p.masked);
        // Back to the normal form, with or without the version while it is the primary.
        assert_eq!(fpe_open(kms, &key, &ct, *t, Some(1), None).unwrap(), normal);
        assert_eq!(fpe_open(kms, &key, &ct, *t, None, None).unwrap(), normal);
    }

    // The context and the type are in the tweak; an explicit tweak replaces them and is needed to open.
    let mut ctx = fpe_item("13812345678", FieldType::Phone);
    ctx.context.insert("tenant".into(), "a".into());
    let with_ctx = kms.protect_fields(&key, &[ctx]).unwrap().remove(0).unwrap();
    let plain = kms
        .protect_fields(&key, &[fpe_item("13812345678", FieldType::Phone)])
        .unwrap()
        .remove(0)
        .unwrap();
    assert_ne!(with_ctx.ciphertext, plain.ciphertext);
    let as_digits = kms
        .protect_fields(&key, &[fpe_item("13812345678", FieldType::Digits)])
        .unwrap()
        .remove(0)
        .unwrap();
    assert_ne!(as_digits.ciphertext[3..], plain.ciphertext[3..]);
    let mut tweaked = fpe_item("13812345678", FieldType::Phone);
    tweaked.tweak = Some(b"row-17");
    let tweaked = kms
        .protect_fields(&key, &[tweaked])
        .unwrap()
        .remove(0)
        .unwrap();
    let tct = String::from_utf8(tweaked.ciphertext).unwrap();
    assert_ne!(tct.as_bytes(), plain.ciphertext);
    assert_eq!(
        fpe_open(kms, &key, &tct, FieldType::Phone, None, Some(b"row-17")).unwrap(),
        "13812345678"
    );
    assert_ne!(
        fpe_open(kms, &key, &tct, FieldType::Phone, None, None).unwrap(),
        "13812345678"
    );

    // Rotation: new values under version 2; old ones open with the version protect reported.
    let old = String::from_utf8(plain.ciphertext).unwrap();
    kms.rotate_key(&key).unwrap();
    let new = kms
        .protect_fields(&key, &[fpe_item("13812345678", FieldType::Phone)])
        .unwrap()
        .remove(0)
        .unwrap();
    assert_eq!(new.version, 2);
    assert_ne!(new.ciphertext, old.as_bytes());
    assert_eq!(
        fpe_open(kms, &key, &old, FieldType::Phone, Some(1), None).unwrap(),
        "13812345678"
    );
    assert_eq!(
        fpe_open(kms, &key, &old, FieldType::Phone, Some(9), None)
            .unwrap_err()
            .code(),
        ErrorCode::InvalidCiphertext
    );

    // Refusals: no format to preserve, a domain under a million, a ciphertext that is not of its type.
    for (value, t) in [
        ("a@example.com", FieldType::Email),
        ("张三", FieldType::Name),
        ("12345", FieldType::Digits),
        ("abc", FieldType::Alnum),
    ] {
        let e = kms
            .protect_fields(&key, &[fpe_item(value, t)])
            .unwrap()
            .remove(0)
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::ValidationError, "{value}");
        assert!(!e.message().contains(value), "{}", e.message());
    }
    assert_eq!(
        fpe_open(
            kms,
            &key,
            "4111111111111112",
            FieldType::BankCard,
            None,
            None
        )
        .unwrap_err()
        .code(),
        ErrorCode::InvalidCiphertext
    );
}

#[test]
fn fpe_round_trips_many_cards_and_ids() {
    let h = harness();
    let kms = &h.kms;
    if keyward_hsm_soft::FIPS_BUILD {
        return;
    }
    let key = kms
        .create_key(CreateKey::new(KeySpec::Aes128))
        .unwrap()
        .key_id;
    let cards: Vec<String> = (0..300).map(|i| card(12 + (i % 8) as usize, i)).collect();
    let items: Vec<FieldInput<'_>> = cards
        .iter()
        .map(|c| fpe_item(c, FieldType::BankCard))
        .collect();
    let out = kms.protect_fields(&key, &items).unwrap();
    let mut seen = std::collections::HashSet::new();
    for (c, p) in cards.iter().zip(out) {
        let ct = String::from_utf8(p.unwrap().ciphertext).unwrap();
        assert!(fields::normalize(FieldType::BankCard, &ct).is_ok(), "{ct}");
        assert_eq!(
            fpe_open(kms, &key, &ct, FieldType::BankCard, Some(1), None).unwrap(),
            *c
        );
        seen.insert(ct);
    }
    assert_eq!(
        seen.len(),
        cards.len(),
        "a permutation: no two values collide"
    );
}
