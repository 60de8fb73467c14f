//! What a request brings: its context (id, address, credential, a refusal decided from its head), its
//! body read within its deadline, and the parsing that names fields but never repeats values.

use super::*;
use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode};
use keyward_core::ErrorCode;
use serde::de::DeserializeOwned;
use std::time::Instant;

/// The subject of a client certificate the TLS layer verified against `tls_client_ca`.
#[derive(Clone, Debug)]
pub struct ClientSubject(pub String);

/// Per-request facts gathered by the middleware.
#[derive(Clone, Debug)]
pub struct Meta {
    /// The `x-request-id`.
    pub request_id: String,
    /// The client address, as recorded.
    pub source_ip: String,
    /// The client address, for policy conditions.
    pub ip: Option<std::net::IpAddr>,
    /// The bearer token, if any.
    pub bearer: Option<Bearer>,
    /// The verified client certificate's subject, if any.
    pub client_subject: Option<String>,
    /// What a door that authenticates by its own protocol (a request signature) found: the identity, or
    /// why the credential was refused. Authorization then takes it as the request's credential, and a
    /// refusal is recorded as any other.
    pub verified: Option<Result<Arc<crate::auth::Principal>, ApiError>>,
    /// When the request arrived.
    pub start: Instant,
    /// What the request concerns other than a key (`identity/<name>`, `policy/<name>`, ...), for its records.
    pub resource: Option<String>,
    /// A refusal decided from the request's head alone (a body too large or not JSON): the request is
    /// authenticated and audited as any other, then refused with it, its body never read.
    pub refused: Option<ApiError>,
    /// When the body must have arrived (see [`RawBody`]).
    pub body_deadline: Instant,
}

/// The body limit of a path (see [`router`]).
fn body_limit(path: &str) -> usize {
    if path == "/v1/sys/restore" {
        MAX_BACKUP_BODY
    } else {
        MAX_BODY
    }
}

/// Refuses, from the head alone, a body that cannot be accepted: a declared length over the limit (413,
/// before a byte of it is read), or a body that is not declared JSON (415: every body of the API is JSON, and
/// requiring the media type keeps a browser's cross-site form post, which cannot set it, from ever being
/// read).
pub(super) fn body_refusal(req: &Request) -> Option<ApiError> {
    let headers = req.headers();
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let limit = body_limit(req.uri().path());
    if declared.is_some_and(|n| n > limit as u64) {
        return Some(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("request body is over {} MiB", limit / (1024 * 1024)),
        ));
    }
    let has_body = declared.is_some_and(|n| n > 0)
        || headers.contains_key(axum::http::header::TRANSFER_ENCODING);
    // The AWS KMS protocol (`POST /`) declares its JSON as `application/x-amz-json-1.1`.
    let media = if req.uri().path() == "/" {
        "application/x-amz-json-1.1"
    } else {
        "application/json"
    };
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case(media));
    (has_body && !json).then(|| {
        ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("request bodies are JSON: send Content-Type: {media}"),
        )
    })
}

/// `kind/name` for [`Meta::on`]; a name from the request is cut to 256 bytes, as no valid one is longer.
pub fn resource(kind: &str, name: &str) -> String {
    let mut end = name.len().min(256);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{kind}/{}", &name[..end])
}

impl Meta {
    /// Names what the request concerns in its audit records.
    pub fn on(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Meta {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, ApiError> {
        let mut meta = parts
            .extensions
            .get::<Meta>()
            .cloned()
            .ok_or_else(|| ApiError::new(ErrorCode::Unavailable, "request context missing"))?;
        meta.bearer = bearer(&parts.headers);
        meta.client_subject = parts.extensions.get::<ClientSubject>().map(|s| s.0.clone());
        Ok(meta)
    }
}

/// A bearer token as a request presented it. The request context is cloned into handlers and may be
/// printed while debugging, so the token is wiped when each copy is dropped and `Debug` never shows it.
#[derive(Clone)]
pub struct Bearer(zeroize::Zeroizing<String>);

impl Bearer {
    /// A token a door found in a header of its own protocol (Vault's `X-Vault-Token`).
    pub fn new(token: &str) -> Bearer {
        Bearer(zeroize::Zeroizing::new(token.trim().to_string()))
    }

    /// The token, for authentication only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer(<redacted>)")
    }
}

fn bearer(headers: &HeaderMap) -> Option<Bearer> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| Bearer(zeroize::Zeroizing::new(token.trim().to_string())))
}

/// The raw body, read with the size limit; parsing happens inside [`call`] so bad input is audited too.
pub struct RawBody(pub Result<Bytes, ApiError>);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = std::convert::Infallible;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (refused, deadline) = match req.extensions().get::<Meta>() {
            Some(m) => (m.refused.clone(), Some(m.body_deadline)),
            None => (None, None),
        };
        if let Some(refused) = refused {
            return Ok(RawBody(Err(refused)));
        }
        let limit = body_limit(req.uri().path());
        let read = Bytes::from_request(req, state);
        // A body that stalls or stops short is the client's doing: 408, before the request's own time runs
        // out (which would read as the service's failure).
        let read = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline.into(), read).await {
                Ok(read) => read,
                Err(_) => {
                    return Ok(RawBody(Err(ApiError::new(
                        ErrorCode::RequestTimeout,
                        "the request body did not arrive in time",
                    ))))
                }
            },
            None => read.await,
        };
        Ok(RawBody(read.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("request body is over {} MiB", limit / (1024 * 1024)),
                )
            } else {
                ApiError::new(
                    ErrorCode::RequestTimeout,
                    "the request body was cut short or could not be read",
                )
            }
        })))
    }
}

/// Parses a JSON body. Error messages name fields and positions, never values (which may be secrets).
pub fn parse<T: DeserializeOwned>(body: &RawBody) -> Result<T, ApiError> {
    let bytes = body.0.as_ref().map_err(Clone::clone)?;
    let bytes: &[u8] = if bytes.is_empty() { b"{}" } else { bytes };
    // Every request body is an object. serde would also fill a struct from an array, by position.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::validation("the body must be a JSON object"));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::validation(explain::<T>(bytes, &e)))
}

/// A batch body whose items did not all parse: the batch's items, each parsed on its own, so that one
/// item's bad value (base64 that does not decode, a missing field) fails that item alone and the others run.
/// `None` when the body is not a batch of objects with nothing beside `items` (the whole-body error stands).
/// Only a body that failed the strict parse pays for this.
pub fn batch_items<T: DeserializeOwned>(body: &RawBody) -> Option<Vec<Result<T, ApiError>>> {
    let bytes = body.0.as_ref().ok()?;
    let mut top: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(bytes).ok()?;
    let items = match top.remove("items")? {
        serde_json::Value::Array(items) => items,
        _ => return None,
    };
    if !top.is_empty() || items.iter().any(|i| !i.is_object()) {
        return None;
    }
    Some(
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                serde_json::from_value::<T>(item)
                    .map_err(|e| ApiError::validation(format!("items[{i}]: {}", detail(&e))))
            })
            .collect(),
    )
}

/// What serde says of a refused value, without the value itself (which may be a secret).
fn detail(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let text = text.split(" at line").next().unwrap_or_default();
    if text.starts_with("unknown field")
        || text.starts_with("missing field")
        || text.starts_with("invalid base64")
    {
        text.to_string()
    } else if let Some((_, expected)) = text.split_once(", expected ") {
        // "invalid type: string \"<value>\", expected u32": only the second half is safe to repeat.
        format!("expected {expected}")
    } else {
        "invalid value".to_string()
    }
}

/// Describes why a body did not parse: where (the field's path, found by parsing again, which only a
/// refused request pays for) and what was expected, without the value serde would quote.
fn explain<T: DeserializeOwned>(bytes: &[u8], e: &serde_json::Error) -> String {
    let at = format!("(line {}, column {})", e.line(), e.column());
    if e.is_syntax() || e.is_eof() {
        return format!("malformed JSON {at}");
    }
    let detail = detail(e);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let mut path = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Err(e) => e.path().to_string(),
        Ok(_) => ".".to_string(),
    };
    if detail.starts_with("unknown field") {
        // The path ends with the unknown name itself, which the detail already quotes.
        path = path
            .rsplit_once('.')
            .map_or(".", |(parent, _)| parent)
            .to_string();
    }
    if path == "." {
        format!("{detail} {at}")
    } else {
        format!("{path}: {detail} {at}")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::explain;

    #[test]
    fn a_request_context_never_shows_its_token() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            axum::http::header::AUTHORIZATION,
            axum::http::HeaderValue::from_static("Bearer kw.s3cr3t-t0ken"),
        );
        let bearer = super::bearer(&headers).unwrap();
        assert_eq!(bearer.expose(), "kw.s3cr3t-t0ken");
        let meta = super::Meta {
            request_id: "r".into(),
            source_ip: "127.0.0.1".into(),
            ip: None,
            bearer: Some(bearer),
            client_subject: None,
            verified: None,
            start: std::time::Instant::now(),
            resource: None,
            refused: None,
            body_deadline: std::time::Instant::now(),
        };
        let shown = format!("{meta:?} {:?}", meta.clone());
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        plaintext: keyward_api::B64,
        #[serde(default)]
        context: BTreeMap<String, String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Batch {
        items: Vec<Item>,
        #[serde(default)]
        limit: Option<u32>,
    }

    #[test]
    fn a_body_is_an_object_or_nothing() {
        let parse = |body: &'static str| {
            super::parse::<Batch>(&super::RawBody(Ok(axum::body::Bytes::from_static(
                body.as_bytes(),
            ))))
        };
        assert!(parse(r#" {"items": []}"#).is_ok());
        // serde would read these as the struct's fields by position.
        for body in [r#"[[], 3]"#, " [[]]", "null", "\"items\"", "7"] {
            let refused = parse(body).unwrap_err();
            assert_eq!(
                refused.0.message(),
                "the body must be a JSON object",
                "{body}"
            );
        }
        assert!(parse("")
            .unwrap_err()
            .0
            .message()
            .contains("missing field `items`"));
    }

    fn refusal(body: &str) -> String {
        let e = serde_json::from_slice::<Batch>(body.as_bytes()).unwrap_err();
        explain::<Batch>(body.as_bytes(), &e)
    }

    #[test]
    fn refusals_name_the_field_and_never_repeat_its_value() {
        let cases = [
            (
                r#"{"colour": "red"}"#,
                "unknown field `colour`, expected `items` or `limit` (line 1, column 9)",
            ),
            (
                r#"{"items": [{"plaintext": "AA=="}, {"plaintext": "c2VjcmV0", "context": {"tenant": 7}}]}"#,
                "items[1].context.tenant: expected a string (line 1, column 83)",
            ),
            (
                r#"{"items": [{"plaintext": "top-secret!"}]}"#,
                "items[0].plaintext: invalid base64 (line 1, column 38)",
            ),
            (
                r#"{"items": [], "limit": "hunter2"}"#,
                "limit: expected u32 (line 1, column 32)",
            ),
            (
                r#"{"items": [{"plaintext": "AA==", "colour": "red"}]}"#,
                "items[0]: unknown field `colour`, expected `plaintext` or `context` (line 1, column 41)",
            ),
            (r#"{"limit": 3}"#, "missing field `items` (line 1, column 12)"),
            (r#"{"items": [}"#, "malformed JSON (line 1, column 12)"),
            (r#"{"items": 5}"#, "items: expected a sequence (line 1, column 11)"),
        ];
        for (body, expected) in cases {
            let message = refusal(body);
            assert_eq!(message, expected, "{body}");
            for secret in ["hunter2", "top-secret", "red", "7"] {
                assert!(
                    !message.contains(&format!("\"{secret}"))
                        && !message.contains(&format!(" {secret}")),
                    "{message} repeats a value"
                );
            }
        }
    }

    #[test]
    fn a_nested_object_given_as_an_array_is_refused_by_name() {
        let body = r#"{"spec": "AES_256", "quorum": [2]}"#;
        let refused = super::parse::<keyward_api::CreateKeyRequest>(&super::RawBody(Ok(
            axum::body::Bytes::from_static(body.as_bytes()),
        )))
        .unwrap_err();
        assert_eq!(
            refused.0.message(),
            "quorum: expected an object (line 1, column 30)"
        );
    }
}
