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
            &[(&p.ciphertext[..], FieldType::Phone, Context::new())],
        )
        .unwrap();
    assert_eq!(back[0].as_ref().unwrap(), "138-1234-5678");
    let wrong = kms
        .unprotect_fields(
            &key,
            &[(&p.ciphertext[..], FieldType::Text, Context::new())],
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
            &[(&p.ciphertext[..], FieldType::Phone, Context::new())],
        )
        .unwrap();
    assert_eq!(back[0].as_ref().unwrap(), "138-1234-5678");
    // Under another key it does not.
    let refused = kms
        .unprotect_fields(
            &other,
            &[(&p.ciphertext[..], FieldType::Phone, Context::new())],
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
            &[(&p.ciphertext[..], FieldType::Phone, Context::new())],
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
    // Keys of field protection are AES keys; items are 1 to 1000; the field context key is reserved.
    let sm4 = kms.create_key(CreateKey::new(KeySpec::Sm4));
    if let Ok(sm4) = sm4 {
        let r = kms.protect_fields(&sm4.key_id, &[item("1", FieldType::Digits)]);
        assert_eq!(code(r.map(|_| 0)), ErrorCode::IncorrectKeyUsage);
    }
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
        kms.unprotect_fields(&key, &[(ct, t, Context::new())])
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
