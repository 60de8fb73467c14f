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
    CertificateParams, DistinguishedName, DnType, IsCa, Issuer, PublicKeyData, SignatureAlgorithm,
    SigningKey,
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

/// Reads one DER element at `pos`: (tag, start of contents, end).
fn der_element(der: &[u8], pos: usize) -> Option<(u8, usize, usize)> {
    let tag = *der.get(pos)?;
    let first = *der.get(pos + 1)? as usize;
    let (len, start) = if first < 0x80 {
        (first, pos + 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 3 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *der.get(pos + 2 + i)? as usize;
        }
        (len, pos + 2 + n)
    };
    let end = start.checked_add(len)?;
    (end <= der.len()).then_some((tag, start, end))
}

/// The subjectPublicKey bit string's contents of an SPKI: what rcgen calls the public key's DER bytes.
fn spki_key_bits(spki: &[u8]) -> Option<Vec<u8>> {
    let (0x30, outer, _) = der_element(spki, 0)? else {
        return None;
    };
    let (0x30, _, alg_end) = der_element(spki, outer)? else {
        return None;
    };
    let (0x03, bits, end) = der_element(spki, alg_end)? else {
        return None;
    };
    // Skip the unused-bits byte (always 0 for keys).
    spki.get(bits + 1..end).map(<[u8]>::to_vec)
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

/// Parses `CN=...,O=...` (commas inside values are not supported).
fn subject(s: &str) -> Result<DistinguishedName, ApiError> {
    let mut dn = DistinguishedName::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| ApiError::validation("subject is a list of TYPE=value pairs"))?;
        let ty = match k.trim().to_ascii_uppercase().as_str() {
            "CN" => DnType::CommonName,
            "O" => DnType::OrganizationName,
            "OU" => DnType::OrganizationalUnitName,
            "C" => DnType::CountryName,
            "ST" => DnType::StateOrProvinceName,
            "L" => DnType::LocalityName,
            _ => {
                return Err(ApiError::validation(
                    "subject attribute types are CN, O, OU, C, ST and L",
                ))
            }
        };
        let v = v.trim();
        if v.is_empty() || v.len() > 256 {
            return Err(ApiError::validation(
                "subject values are 1 to 256 characters",
            ));
        }
        dn.push(ty, v);
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
            if !(1..=36_500).contains(&r.days) {
                return Err(ApiError::validation("days must be 1 to 36500"));
            }
            let signer = signer(&a.kms, &key)?;
            let refusal = signer.refusal.clone();
            let failed = x509_failed(&refusal);
            let now = time::OffsetDateTime::now_utc();
            let not_after = now + time::Duration::days(r.days as i64);
            let is_ca = if r.is_ca.unwrap_or(false) {
                IsCa::Ca(rcgen::BasicConstraints::Unconstrained)
            } else {
                IsCa::NoCa
            };
            let issuer_dn = match &r.subject {
                Some(s) => subject(s)?,
                None => subject(&format!("CN={}", signer.key))?,
            };
            let pem = match &r.csr_pem {
                None => {
                    let mut p = params(Vec::new(), issuer_dn)?;
                    p.not_before = now;
                    p.not_after = not_after;
                    p.is_ca = is_ca;
                    p.self_signed(&signer).map_err(&failed)?.pem()
                }
                Some(csr_pem) => {
                    let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
                        .map_err(|_| {
                            ApiError::validation(
                                "csr_pem is not a valid, correctly signed PKCS#10 request",
                            )
                        })?;
                    csr.params.not_before = now;
                    csr.params.not_after = not_after;
                    csr.params.is_ca = is_ca;
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
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_parse_and_refuse_junk() {
        assert!(subject("CN=api.example.com, O=Example, C=DE").is_ok());
        assert!(subject("").is_err());
        assert!(subject("XX=1").is_err());
        assert!(subject("CN").is_err());
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
