//! Certificate signing requests and certificates signed by a Keyward key.
//!
//! The private key never leaves the engine: rcgen builds the to-be-signed structures and calls back into
//! [`Kms::sign`] for the signature.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;
use keyward_api::{CertificateRequest, CertificateResponse, CsrRequest, CsrResponse};
use keyward_core::{ErrorCode, KeySpec, Kms, KmsError, SignInput, SigningAlgorithm};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, DnValue, IsCa, Issuer, KeyUsagePurpose,
    PublicKeyData, SerialNumber, SignatureAlgorithm, SigningKey,
};

use crate::app::{call, parse, AppState, Meta, Mode, RawBody, Reply};
use crate::authz::Action;
use crate::error::ApiError;

struct KmsSigner {
    kms: Arc<Kms>,
    key: String,
    alg: SigningAlgorithm,
    x509_alg: &'static SignatureAlgorithm,
    raw_public_key: Vec<u8>,
    /// Why the engine refused to sign: rcgen's callback can only say that signing failed, and the caller
    /// must hear the engine's own refusal (a key-agreement key, a disabled key), not a server error.
    refusal: Refusal,
}

type Refusal = Arc<parking_lot::Mutex<Option<KmsError>>>;

impl PublicKeyData for KmsSigner {
    fn der_bytes(&self) -> &[u8] {
        &self.raw_public_key
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.x509_alg
    }
}

impl SigningKey for KmsSigner {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.kms
            .sign(&self.key, SignInput::Message(msg), self.alg)
            .map(|s| s.signature)
            .map_err(|e| {
                *self.refusal.lock() = Some(e);
                rcgen::Error::RemoteKeyError
            })
    }
}

/// The subjectPublicKey bit string's contents of an SPKI: what rcgen calls the public key's DER bytes.
fn spki_key_bits(spki: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::prelude::FromDer;
    let (rest, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki).ok()?;
    rest.is_empty()
        .then(|| info.subject_public_key.data.to_vec())
}

fn signer(kms: &Arc<Kms>, key: &str) -> Result<KmsSigner, ApiError> {
    let pk = kms.public_key(key)?;
    let (alg, x509_alg) = match pk.spec {
        KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => (
            SigningAlgorithm::RsassaPkcs1V15Sha256,
            &rcgen::PKCS_RSA_SHA256,
        ),
        KeySpec::EccNistP256 => (
            SigningAlgorithm::EcdsaSha256,
            &rcgen::PKCS_ECDSA_P256_SHA256,
        ),
        KeySpec::EccNistP384 => (
            SigningAlgorithm::EcdsaSha384,
            &rcgen::PKCS_ECDSA_P384_SHA384,
        ),
        KeySpec::EccNistP521 => (
            SigningAlgorithm::EcdsaSha512,
            &rcgen::PKCS_ECDSA_P521_SHA512,
        ),
        KeySpec::Ed25519 => (SigningAlgorithm::Ed25519, &rcgen::PKCS_ED25519),
        other => {
            return Err(ApiError::new(
                ErrorCode::IncorrectKeyUsage,
                format!(
                    "X.509 signing is offered for RSA, NIST ECDSA and Ed25519 keys, not {other}"
                ),
            ))
        }
    };
    let raw_public_key = spki_key_bits(&pk.der)
        .ok_or_else(|| ApiError::new(ErrorCode::Unavailable, "public key encoding"))?;
    Ok(KmsSigner {
        kms: kms.clone(),
        key: pk.key_id.to_string(),
        alg,
        x509_alg,
        raw_public_key,
        refusal: Refusal::default(),
    })
}

/// The attribute types a subject may name, with their OIDs and how their values are encoded.
const ATTRIBUTES: [(&str, &[u64]); 8] = [
    ("CN", &[2, 5, 4, 3]),
    ("O", &[2, 5, 4, 10]),
    ("OU", &[2, 5, 4, 11]),
    ("C", &[2, 5, 4, 6]),
    ("ST", &[2, 5, 4, 8]),
    ("L", &[2, 5, 4, 7]),
    ("STREET", &[2, 5, 4, 9]),
    ("SERIALNUMBER", &[2, 5, 4, 5]),
];

/// One attribute of a subject as written: its type and its value, each byte marked when it was escaped
/// (an escaped space is part of the value, an unescaped one around it is not).
type Written = (String, Vec<(u8, bool)>);

/// Splits a subject into its `TYPE=value` pairs, resolving RFC 4514 escapes in the values.
fn split_subject(s: &str) -> Result<Vec<Written>, ApiError> {
    const ESCAPABLE: &[u8] = b",+\"\\<>;=# ";
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut pairs = Vec::new();
    let mut ty: Option<String> = None;
    let mut field: Vec<(u8, bool)> = Vec::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    loop {
        let b = bytes.get(i).copied();
        match b {
            None | Some(b',') => {
                let Some(t) = ty.take() else {
                    if field.iter().all(|(c, _)| *c == b' ') {
                        // An empty pair (a stray or trailing comma) is skipped.
                        field.clear();
                        if b.is_none() {
                            break;
                        }
                        i += 1;
                        continue;
                    }
                    return Err(ApiError::validation(
                        "subject is a list of TYPE=value pairs",
                    ));
                };
                pairs.push((t, std::mem::take(&mut field)));
                if b.is_none() {
                    break;
                }
            }
            Some(b'=') if ty.is_none() => {
                let name: Vec<u8> = field.drain(..).map(|(c, _)| c).collect();
                let name = String::from_utf8_lossy(&name).trim().to_ascii_uppercase();
                if name.is_empty() {
                    return Err(ApiError::validation(
                        "subject is a list of TYPE=value pairs",
                    ));
                }
                ty = Some(name);
            }
            Some(b'\\') => {
                let next = bytes.get(i + 1).copied();
                match (next.and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
                    (Some(h), Some(l)) => {
                        field.push(((h << 4) | l, true));
                        i += 2;
                    }
                    _ => match next {
                        Some(c) if ESCAPABLE.contains(&c) => {
                            field.push((c, true));
                            i += 1;
                        }
                        _ => {
                            return Err(ApiError::validation(
                                "subject: a backslash escapes one of , + \" \\ < > ; = # or a space, or gives a byte as two hex digits",
                            ))
                        }
                    },
                }
            }
            Some(b'+') => return Err(ApiError::validation(
                "subject: multi-valued names (+) are not supported; write a literal plus as \\+",
            )),
            Some(b';') => {
                return Err(ApiError::validation(
                    "subject: pairs are separated by commas; write a literal semicolon as \\;",
                ))
            }
            Some(c) => field.push((c, false)),
        }
        i += 1;
    }
    Ok(pairs)
}

/// Parses a subject: `TYPE=value` pairs separated by commas, in the order the certificate holds them (the
/// order OpenSSL prints: `CN=api.example.com, O=Example\, Inc., C=DE`). Values follow RFC 4514's escaping:
/// a comma, plus, semicolon, quote, backslash, angle bracket or equals sign in a value is preceded by a
/// backslash, as are spaces that belong to its ends, and `\XX` is one byte of its UTF-8 in hex. A country
/// is two letters and a serial number printable ASCII (their X.520 types). Each type appears once: the
/// certificate library keeps one value per type, and a second would silently replace the first.
fn subject(s: &str) -> Result<DistinguishedName, ApiError> {
    let mut dn = DistinguishedName::new();
    for (ty, mut value) in split_subject(s)? {
        let Some((_, oid)) = ATTRIBUTES.iter().find(|(name, _)| *name == ty) else {
            return Err(ApiError::validation(
                "subject attribute types are CN, O, OU, C, ST, L, STREET and SERIALNUMBER",
            ));
        };
        if dn.get(&DnType::from_oid(oid)).is_some() {
            return Err(ApiError::validation(format!(
                "subject names {ty} twice; each attribute type appears once"
            )));
        }
        while value.first() == Some(&(b' ', false)) {
            value.remove(0);
        }
        while value.last() == Some(&(b' ', false)) {
            value.pop();
        }
        let value = String::from_utf8(value.into_iter().map(|(c, _)| c).collect())
            .map_err(|_| ApiError::validation(format!("subject: the {ty} value is not UTF-8")))?;
        if value.is_empty() || value.chars().count() > 256 {
            return Err(ApiError::validation(
                "subject values are 1 to 256 characters",
            ));
        }
        let refused = |what: &str| ApiError::validation(format!("subject: {ty} is {what}"));
        let encoded = match ty.as_str() {
            "C" if value.len() == 2 && value.bytes().all(|c| c.is_ascii_alphabetic()) => {
                DnValue::PrintableString(
                    value
                        .try_into()
                        .map_err(|_| refused("two letters (ISO 3166)"))?,
                )
            }
            "C" => return Err(refused("two letters (ISO 3166)")),
            "SERIALNUMBER" => DnValue::PrintableString(
                value
                    .try_into()
                    .map_err(|_| refused("letters, digits, spaces and '()+,-./:=? only"))?,
            ),
            _ => DnValue::Utf8String(value),
        };
        dn.push(DnType::from_oid(oid), encoded);
    }
    if dn.iter().next().is_none() {
        return Err(ApiError::validation("subject is empty"));
    }
    Ok(dn)
}

fn params(sans: Vec<String>, dn: DistinguishedName) -> Result<CertificateParams, ApiError> {
    if sans.len() > 100 {
        return Err(ApiError::validation(
            "at most 100 subject alternative names",
        ));
    }
    let mut p = CertificateParams::new(sans)
        .map_err(|_| ApiError::validation("a subject alternative name is invalid"))?;
    p.distinguished_name = dn;
    Ok(p)
}

/// The answer to a failed rcgen call: the engine's refusal when the signature was refused.
fn x509_failed(refusal: &Refusal) -> impl Fn(rcgen::Error) -> ApiError + '_ {
    move |e| match (e, refusal.lock().take()) {
        (rcgen::Error::RemoteKeyError, Some(refused)) => ApiError(refused),
        (rcgen::Error::RemoteKeyError, None) => {
            ApiError::new(ErrorCode::Unavailable, "the key could not sign")
        }
        (other, _) => ApiError::validation(format!("cannot build the X.509 structure: {other}")),
    }
}

/// `POST /v1/keys/{key}/csr`.
pub async fn csr(
    State(app): State<AppState>,
    meta: Meta,
    Path(key): Path<String>,
    body: RawBody,
) -> Response {
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::CreateCsr,
        Some(key.clone()),
        Mode::Blocking,
        move |_| {
            let r: CsrRequest = parse(&body)?;
            let signer = signer(&a.kms, &key)?;
            let p = params(r.sans.unwrap_or_default(), subject(&r.subject)?)?;
            let failed = x509_failed(&signer.refusal);
            let csr = p.serialize_request(&signer).map_err(&failed)?;
            let csr_pem = csr.pem().map_err(&failed)?;
            Reply::ok(&CsrResponse { csr_pem }).map(|x| x.key(signer.key.clone(), None))
        },
    )
    .await
}

/// What a CA certificate's key is for (RFC 5280 4.2.1.3: a CA must say it signs certificates and CRLs).
const CA_USAGES: [KeyUsagePurpose; 3] = [
    KeyUsagePurpose::DigitalSignature,
    KeyUsagePurpose::KeyCertSign,
    KeyUsagePurpose::CrlSign,
];

/// A fresh serial number from the HSM's random source: 20 bytes, positive (RFC 5280 4.1.2.2). A CA must
/// never give two certificates one serial, and renewing a certificate for the same key is routine, so the
/// serial cannot be derived from the key.
fn serial_number(kms: &Kms) -> Result<SerialNumber, ApiError> {
    let mut bytes = kms.random(20)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Refuses a CSR whose subject the certificate could not carry whole: one naming an attribute type twice
/// (two `OU`s), or a multi-valued name, would otherwise lose attributes silently, since the certificate
/// library keeps one value per type.
fn carried_whole(csr_pem: &str, kept: &DistinguishedName) -> Result<(), ApiError> {
    use x509_parser::prelude::FromDer as _;
    let unreadable =
        || ApiError::validation("csr_pem is not a valid, correctly signed PKCS#10 request");
    let (_, der) =
        x509_parser::pem::parse_x509_pem(csr_pem.as_bytes()).map_err(|_| unreadable())?;
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&der.contents)
            .map_err(|_| unreadable())?;
    let subject = &csr.certification_request_info.subject;
    if subject.iter().any(|rdn| rdn.iter().count() != 1)
        || subject.iter_attributes().count() != kept.iter().count()
    {
        return Err(ApiError::validation(
            "the CSR's subject names an attribute type twice or holds a multi-valued name; a certificate here holds each type once",
        ));
    }
    Ok(())
}

/// Issues a certificate signed by `key`: self-signed from `r`'s subject, or for a CSR (whose subject must
/// have been carried over whole), with the validity, CA flag and serial the request and the service decide.
fn issue(a: &AppState, key: &str, r: &CertificateRequest) -> Result<Reply, ApiError> {
    if !(1..=36_500).contains(&r.days) {
        return Err(ApiError::validation("days must be 1 to 36500"));
    }
    let signer = signer(&a.kms, key)?;
    let refusal = signer.refusal.clone();
    let failed = x509_failed(&refusal);
    let now = time::OffsetDateTime::from_unix_timestamp(a.clock.now())
        .map_err(|_| ApiError::new(ErrorCode::Unavailable, "the clock is out of range"))?;
    let not_after = now + time::Duration::days(r.days as i64);
    let is_ca = if r.is_ca.unwrap_or(false) {
        IsCa::Ca(rcgen::BasicConstraints::Unconstrained)
    } else {
        IsCa::NoCa
    };
    let ca_usages = matches!(is_ca, IsCa::Ca(_));
    let issuer_dn = match &r.subject {
        Some(s) => subject(s)?,
        None => subject(&format!("CN={}", signer.key))?,
    };
    let serial = serial_number(&a.kms)?;
    let pem = match &r.csr_pem {
        None => {
            let mut p = params(Vec::new(), issuer_dn)?;
            p.not_before = now;
            p.not_after = not_after;
            p.is_ca = is_ca;
            p.serial_number = Some(serial);
            if ca_usages {
                p.key_usages = CA_USAGES.to_vec();
            }
            p.self_signed(&signer).map_err(&failed)?.pem()
        }
        Some(csr_pem) => {
            let mut csr =
                rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|_| {
                    ApiError::validation("csr_pem is not a valid, correctly signed PKCS#10 request")
                })?;
            carried_whole(csr_pem, &csr.params.distinguished_name)?;
            csr.params.not_before = now;
            csr.params.not_after = not_after;
            csr.params.is_ca = is_ca;
            csr.params.serial_number = Some(serial);
            if ca_usages {
                for usage in CA_USAGES {
                    if !csr.params.key_usages.contains(&usage) {
                        csr.params.key_usages.push(usage);
                    }
                }
            }
            let mut ca = CertificateParams::default();
            ca.distinguished_name = issuer_dn;
            let key_id = signer.key.clone();
            let issuer = Issuer::new(ca, signer);
            let cert = csr.signed_by(&issuer).map_err(&failed)?;
            return Reply::ok(&CertificateResponse {
                certificate_pem: cert.pem(),
            })
            .map(|x| x.key(key_id, None));
        }
    };
    Reply::ok(&CertificateResponse {
        certificate_pem: pem,
    })
    .map(|x| x.key(signer.key.clone(), None))
}

/// `POST /v1/keys/{key}/certificate`: self-signed, or issued from a CSR with this key as the CA.
pub async fn certificate(
    State(app): State<AppState>,
    meta: Meta,
    Path(key): Path<String>,
    body: RawBody,
) -> Response {
    let a = app.clone();
    call(
        &app,
        &meta,
        Action::IssueCertificate,
        Some(key.clone()),
        Mode::Blocking,
        move |_| {
            let r: CertificateRequest = parse(&body)?;
            issue(&a, &key, &r)
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(s: &str) -> Vec<(String, String)> {
        subject(s)
            .unwrap()
            .iter()
            .map(|(ty, v)| {
                let v = match v {
                    DnValue::Utf8String(x) => x.clone(),
                    DnValue::PrintableString(x) => x.as_str().to_string(),
                    other => panic!("{other:?}"),
                };
                let name = ATTRIBUTES
                    .iter()
                    .find(|(_, oid)| DnType::from_oid(oid) == *ty)
                    .unwrap()
                    .0;
                (name.to_string(), v)
            })
            .collect()
    }

    fn refusal(s: &str) -> String {
        subject(s).unwrap_err().0.message().to_string()
    }

    #[test]
    fn subjects_parse_and_refuse_junk() {
        assert!(subject("CN=api.example.com, O=Example, C=DE").is_ok());
        assert!(subject("").is_err());
        assert!(subject("XX=1").is_err());
        assert!(subject("CN").is_err());
    }

    #[test]
    fn subject_values_follow_rfc_4514_escaping() {
        let pairs = |xs: &[(&str, &str)]| -> Vec<(String, String)> {
            xs.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(
            shown(r"CN=api.example.com, O=Example\, Inc., c=de"),
            pairs(&[
                ("CN", "api.example.com"),
                ("O", "Example, Inc."),
                ("C", "de")
            ])
        );
        // Escaped spaces belong to the value, unescaped ones around it do not; \XX is a UTF-8 byte.
        assert_eq!(
            shown(r"CN=\ padded\ ,O=M\C3\BCller \+ S\C3\B6hne,OU=a=b \; c\\d,"),
            pairs(&[
                ("CN", " padded "),
                ("O", "M\u{fc}ller + S\u{f6}hne"),
                ("OU", "a=b ; c\\d")
            ])
        );
        assert_eq!(
            shown("SERIALNUMBER=DE-12345,STREET=Hauptstra\u{df}e 1,CN=\u{6797}"),
            pairs(&[
                ("SERIALNUMBER", "DE-12345"),
                ("STREET", "Hauptstra\u{df}e 1"),
                ("CN", "\u{6797}")
            ])
        );
        for (s, said) in [
            ("CN=a+O=b", "multi-valued"),
            ("CN=a;O=b", "separated by commas"),
            (r"CN=a\x", "a backslash escapes"),
            (r"CN=a\", "a backslash escapes"),
            (r"CN=\FF", "not UTF-8"),
            ("C=DEU", "two letters"),
            ("C=D1", "two letters"),
            ("SERIALNUMBER=no_underscore", "letters, digits"),
            ("OU=a, OU=b", "names OU twice"),
            ("CN=  ", "1 to 256"),
            ("CN=a, =b", "TYPE=value"),
            ("CN=a,O", "TYPE=value"),
            ("EMAIL=a@b", "attribute types"),
        ] {
            assert!(refusal(s).contains(said), "{s}: {}", refusal(s));
        }
    }

    #[test]
    fn spki_bits_of_ed25519() {
        let mut spki = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        spki.extend_from_slice(&[7u8; 32]);
        assert_eq!(spki_key_bits(&spki), Some(vec![7u8; 32]));
        assert_eq!(spki_key_bits(&spki[..20]), None);
    }
}
