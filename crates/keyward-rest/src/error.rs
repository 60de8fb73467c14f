//! The one place where errors become HTTP responses.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keyward_api::{ErrorBody, ErrorDetail};
use keyward_core::{ErrorCode, KmsError};

/// An API error: a code from the contract and a message.
#[derive(Clone, Debug)]
pub struct ApiError(pub KmsError);

impl ApiError {
    /// An error with a code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError(KmsError::new(code, message))
    }

    /// `400 ValidationError`.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ValidationError, message)
    }

    /// The code.
    pub fn code(&self) -> ErrorCode {
        self.0.code()
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.0.code().as_str().into(),
                message: self.0.message().into(),
            },
        }
    }
}

impl From<KmsError> for ApiError {
    fn from(e: KmsError) -> Self {
        ApiError(e)
    }
}

impl From<keyward_store::StoreError> for ApiError {
    fn from(e: keyward_store::StoreError) -> Self {
        ApiError(KmsError::from(e))
    }
}

/// Renders a JSON body with a status.
pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code().http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut resp = json_response(status, body);
        if self.0.code() == ErrorCode::Throttled {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}
