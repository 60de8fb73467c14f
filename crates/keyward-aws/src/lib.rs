//! The AWS KMS protocol, so that an application written against AWS KMS (an AWS SDK, the AWS CLI, the AWS
//! Encryption SDK) works against Keyward by changing only its endpoint.
//!
//! `POST /` with `X-Amz-Target: TrentService.<Operation>` and a JSON 1.1 body, signed with Signature Version
//! 4 by an access key of one of Keyward's identities. The door is thin: it checks the signature (`sigv4`),
//! names the identity, and runs the operation through the REST API's own pipeline, so that authorization
//! (roles, policies, rate limits), the write-ahead audit record, quorum approval and the key model are the
//! same rules, written once. What is its own is the mapping: AWS names and shapes in, Keyward's engine
//! calls, AWS names, shapes and exceptions out. Ciphertext blobs are Keyward's own ciphertexts, so that data
//! encrypted through either API decrypts through the other.

pub mod sigv4;

mod ops;
mod wire;

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use keyward_core::ErrorCode;
use keyward_rest::app::{Meta, RawBody};
use keyward_rest::error::ApiError;
use keyward_rest::AppState;

use crate::sigv4::SigError;

/// The media type of the protocol's bodies.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// The routes of the AWS KMS protocol, to merge beside the REST API's (see `keyward_rest::router_with`).
pub fn routes() -> Router<AppState> {
    Router::new().route("/", post(dispatch))
}

/// The exception an answer names, when it is not the one its error code implies (a failed signature
/// check, a verification that failed): set by the code that knows, read when the answer is written.
#[derive(Clone, Default)]
pub(crate) struct Exception(Arc<OnceLock<&'static str>>);

impl Exception {
    /// Names the exception of the error about to be returned.
    pub(crate) fn set(&self, name: &'static str) {
        let _ = self.0.set(name);
    }

    fn get(&self) -> Option<&'static str> {
        self.0.get().copied()
    }
}

/// `POST /`: one AWS KMS operation.
async fn dispatch(
    State(app): State<AppState>,
    mut meta: Meta,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: RawBody,
) -> Response {
    let exception = Exception::default();
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let name = target.strip_prefix("TrentService.").unwrap_or(target);
    let op = ops::Op::parse(name);
    let body = body.0;
    let verified = match &body {
        Ok(bytes) => authenticate(&app, &method, &uri, &headers, bytes, &exception),
        Err(e) => Err(e.clone()),
    };
    let region = verified
        .as_ref()
        .map(|(_, region)| region.clone())
        .unwrap_or_default();
    meta.verified = Some(verified.map(|(p, _)| p));
    let request_id = meta.request_id.clone();
    let result = ops::run(&app, meta, op, name, region, body, exception.clone()).await;
    render(result, &exception, &request_id)
}

/// Checks the request's signature and names the identity its access key belongs to, with the region of
/// its credential scope.
fn authenticate(
    app: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    exception: &Exception,
) -> Result<(Arc<keyward_iam::auth::Principal>, String), ApiError> {
    let refused = |e: SigError, name: &'static str| {
        exception.set(name);
        ApiError::new(ErrorCode::Unauthenticated, e.message())
    };
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| refused(SigError::Missing, "MissingAuthenticationTokenException"))?;
    let auth = sigv4::parse_authorization(header)
        .map_err(|e| refused(e, "IncompleteSignatureException"))?;
    let resolved = app
        .iam
        .access_keys
        .resolve(&app.kms, &auth.access_key_id)
        .map_err(|e| {
            if e.code() == ErrorCode::Unauthenticated {
                exception.set("UnrecognizedClientException");
            }
            ApiError(e)
        })?;
    let listed: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    let request = sigv4::Request {
        method: method.as_str(),
        path: uri.path(),
        query: uri.query().unwrap_or(""),
        headers: &listed,
        body,
    };
    let scope = format!("{}/{}/{}", auth.date, auth.region, auth.service);
    let key = resolved.derived(&scope, |secret| {
        sigv4::signing_key(secret, &auth.date, &auth.region, &auth.service)
    });
    let now = app.clock.now();
    sigv4::verify(&request, &auth, &key, now).map_err(|e| match e {
        SigError::Skewed => refused(e, "InvalidSignatureException"),
        SigError::SecurityToken => refused(e, "UnrecognizedClientException"),
        other => refused(other, "InvalidSignatureException"),
    })?;
    resolved.used(now);
    Ok((resolved.principal.clone(), auth.region))
}

/// The status and exception name AWS SDKs expect for an error code.
fn exception_of(code: ErrorCode) -> (StatusCode, &'static str) {
    match code {
        ErrorCode::ValidationError => (StatusCode::BAD_REQUEST, "ValidationException"),
        ErrorCode::IncorrectKeyUsage => (StatusCode::BAD_REQUEST, "InvalidKeyUsageException"),
        ErrorCode::InvalidCiphertext => (StatusCode::BAD_REQUEST, "InvalidCiphertextException"),
        ErrorCode::IncorrectKeyMaterial => {
            (StatusCode::BAD_REQUEST, "IncorrectKeyMaterialException")
        }
        ErrorCode::Unauthenticated => (StatusCode::BAD_REQUEST, "UnrecognizedClientException"),
        ErrorCode::AccessDenied => (StatusCode::BAD_REQUEST, "AccessDeniedException"),
        ErrorCode::NotFound => (StatusCode::BAD_REQUEST, "NotFoundException"),
        ErrorCode::AlreadyExists => (StatusCode::BAD_REQUEST, "AlreadyExistsException"),
        ErrorCode::KeyDisabled => (StatusCode::BAD_REQUEST, "DisabledException"),
        ErrorCode::KeyPendingDeletion | ErrorCode::KeyDestroyed | ErrorCode::InvalidState => {
            (StatusCode::BAD_REQUEST, "KMSInvalidStateException")
        }
        ErrorCode::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "RequestTimeoutException"),
        ErrorCode::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "ValidationException"),
        ErrorCode::UnsupportedMediaType => {
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "ValidationException")
        }
        ErrorCode::Throttled => (StatusCode::BAD_REQUEST, "ThrottlingException"),
        ErrorCode::Sealed => (
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableException",
        ),
        ErrorCode::Unavailable => (StatusCode::INTERNAL_SERVER_ERROR, "KMSInternalException"),
    }
}

/// Exceptions that AWS answers with a status of their own.
fn status_of(exception: &str, default: StatusCode) -> StatusCode {
    match exception {
        "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "IncompleteSignatureException"
        | "MissingAuthenticationTokenException" => StatusCode::BAD_REQUEST,
        _ => default,
    }
}

fn render(
    result: Result<(StatusCode, Vec<u8>), ApiError>,
    exception: &Exception,
    request_id: &str,
) -> Response {
    let (status, body) = match result {
        Ok((_, body)) => (StatusCode::OK, body),
        Err(e) => {
            let (status, name) = exception_of(e.code());
            let name = exception.get().unwrap_or(name);
            let status = status_of(name, status);
            let body = serde_json::json!({"__type": name, "message": e.0.message()});
            (status, serde_json::to_vec(&body).unwrap_or_default())
        }
    };
    let mut resp = (status, body).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert("x-amzn-requestid", v);
    }
    resp
}

/// An error of this door's own making.
pub(crate) fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::validation(message)
}
