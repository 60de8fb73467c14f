//! Field-level protection of personal data: `protect`, `unprotect` and `blind-index`, each a batch of up to
//! 1000 values under one key, one audit record, and each item answered (or refused) on its own.

use axum::extract::{Path, State};
use axum::response::Response;
use keyward_api::{
    BatchItem, BatchResponse, BlindIndexAnswer, BlindIndexItem, Context, FieldItems, MaskRequest,
    ProtectItem, ProtectedItem, UnprotectItem, UnprotectedItem, B64,
};
use keyward_core::fields::{FieldType, MaskRule};
use keyward_core::{
    FieldInput, FieldMode, KeyUsage, Kms, KmsResult, ProtectedField, SealedField, MAX_FIELD_ITEMS,
};
use serde::de::DeserializeOwned;

use crate::app::{call, parse, AppState, Caller, Meta, Mode, RawBody, Reply};
use crate::authz::Action;
use crate::error::ApiError;

/// The items of a body `{"items": [...]}`, each parsed on its own so that one malformed item fails alone.
fn items<T: DeserializeOwned>(body: &RawBody) -> Result<Vec<Result<T, ApiError>>, ApiError> {
    let items = match crate::app::batch_items::<T>(body) {
        Some(items) => items,
        None => {
            parse::<FieldItems<serde_json::Value>>(body)?;
            return Err(ApiError::validation("every item is a JSON object"));
        }
    };
    if items.is_empty() || items.len() > MAX_FIELD_ITEMS {
        return Err(ApiError::validation("items: 1 to 1000 values"));
    }
    Ok(items)
}

fn field_type(name: &str) -> Result<FieldType, ApiError> {
    FieldType::parse(name).ok_or_else(|| {
        let names: Vec<&str> = FieldType::ALL.iter().map(|t| t.as_str()).collect();
        ApiError::validation(format!(
            "type {} is not one of {}",
            keyward_core::quoted(name),
            names.join(", ")
        ))
    })
}

/// The caller's context, checked against its policies' conditions.
fn context(caller: &Caller, c: Option<Context>) -> Result<Context, ApiError> {
    let c = c.unwrap_or_default();
    caller.check_context(&c)?;
    Ok(c)
}

/// Runs the well-formed items through `run` (one engine call) and puts each answer back at its item's place.
fn answer<T, R, A>(
    prepared: Vec<Result<T, ApiError>>,
    run: impl FnOnce(&[T]) -> KmsResult<Vec<KmsResult<R>>>,
    show: impl Fn(R) -> A,
) -> Result<BatchResponse<A>, ApiError> {
    let mut good = Vec::new();
    let mut order = Vec::with_capacity(prepared.len());
    for p in prepared {
        match p {
            Ok(t) => {
                good.push(t);
                order.push(None);
            }
            Err(e) => order.push(Some(e)),
        }
    }
    let mut results = if good.is_empty() {
        Vec::new().into_iter()
    } else {
        run(&good)?.into_iter()
    };
    let items = order
        .into_iter()
        .map(|refused| match refused {
            Some(e) => BatchItem::Err(e.body()),
            None => match results.next() {
                Some(Ok(r)) => BatchItem::Ok(show(r)),
                Some(Err(e)) => BatchItem::Err(ApiError::from(e).body()),
                None => BatchItem::Err(ApiError::validation("item not processed").body()),
            },
        })
        .collect();
    Ok(BatchResponse { items })
}

fn hex(bytes: &[u8]) -> String {
    keyward_core::audit::hex(bytes)
}

/// One value to protect, checked where the API's own rules decide (type, mode, mask, policy context).
struct Prepared {
    mode: FieldMode,
    value: String,
    field: FieldType,
    context: Context,
    mask: Option<MaskRule>,
    tweak: Option<Vec<u8>>,
}

fn field_mode(mode: Option<&str>) -> Result<FieldMode, ApiError> {
    match mode {
        None | Some("encrypt") => Ok(FieldMode::Encrypt),
        Some("deterministic") => Ok(FieldMode::Deterministic),
        Some("fpe") => Ok(FieldMode::Fpe),
        Some(other) => Err(ApiError::validation(format!(
            "mode {} is not encrypt, deterministic or fpe",
            keyward_core::quoted(other)
        ))),
    }
}

/// A tweak is FF1's alone: given with another mode it would be silently ignored, so it is refused.
fn fpe_tweak(mode: FieldMode, tweak: Option<B64>) -> Result<Option<Vec<u8>>, ApiError> {
    match tweak {
        Some(_) if mode != FieldMode::Fpe => {
            Err(ApiError::validation("tweak is taken by mode fpe only"))
        }
        Some(t) if t.0.len() > keyward_core::MAX_FPE_TWEAK => {
            Err(ApiError::validation("tweak: at most 256 bytes"))
        }
        t => Ok(t.map(|t| t.0)),
    }
}

fn prepare(caller: &Caller, i: ProtectItem) -> Result<Prepared, ApiError> {
    let field = field_type(&i.field_type)?;
    let mode = field_mode(i.mode.as_deref())?;
    let mask = i.mask.map(|m: MaskRequest| MaskRule {
        keep_first: m.keep_first.unwrap_or(0) as usize,
        keep_last: m.keep_last.unwrap_or(0) as usize,
        mask_char: m.mask_char.unwrap_or('*'),
    });
    Ok(Prepared {
        mode,
        value: i.value,
        field,
        context: context(caller, i.context)?,
        mask,
        tweak: fpe_tweak(mode, i.tweak)?,
    })
}

/// An engine call over the well-formed items of a batch: each item's result, or the key's error for all.
type Engine<T, R> = fn(&Kms, &str, &[T]) -> KmsResult<Vec<KmsResult<R>>>;

/// One field call: parse the items, check the key once, prepare each item (its refusals stay its own), run
/// the well-formed ones through the engine in one call, and answer item by item.
#[allow(clippy::too_many_arguments)]
async fn field_op<I, T, R, A>(
    app: AppState,
    meta: Meta,
    key: String,
    body: RawBody,
    action: Action,
    prepare: fn(&Caller, I) -> Result<T, ApiError>,
    run: Engine<T, R>,
    show: fn(R) -> A,
) -> Response
where
    I: DeserializeOwned + Send + 'static,
    T: Send + 'static,
    R: Send + 'static,
    A: serde::Serialize + Send + 'static,
{
    let a = app.clone();
    call(
        &app,
        &meta,
        action,
        Some(key.clone()),
        Mode::Inline,
        move |caller| {
            let parsed = items::<I>(&body)?;
            a.kms.check_usable(&key, KeyUsage::EncryptDecrypt)?;
            let prepared = parsed
                .into_iter()
                .map(|i| i.and_then(|i| prepare(&caller, i)))
                .collect();
            Reply::ok(&answer(prepared, |good| run(&a.kms, &key, good), show)?)
        },
    )
    .await
}

/// Each answer with whether it is format-preserved text (shown as it is) or a ciphertext (shown in base64).
fn run_protect(
    kms: &Kms,
    key: &str,
    good: &[Prepared],
) -> KmsResult<Vec<KmsResult<(ProtectedField, bool)>>> {
    let inputs: Vec<FieldInput<'_>> = good
        .iter()
        .map(|p| FieldInput {
            mode: p.mode,
            value: &p.value,
            field: p.field,
            context: p.context.clone(),
            mask: p.mask,
            tweak: p.tweak.as_deref(),
        })
        .collect();
    Ok(kms
        .protect_fields(key, &inputs)?
        .into_iter()
        .zip(good)
        .map(|(r, p)| r.map(|f| (f, p.mode == FieldMode::Fpe)))
        .collect())
}

fn show_protected((p, fpe): (ProtectedField, bool)) -> ProtectedItem {
    ProtectedItem {
        ciphertext: if fpe {
            String::from_utf8(p.ciphertext).unwrap_or_default()
        } else {
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &p.ciphertext)
        },
        version: p.version,
        masked: p.masked,
        blind_index: hex(&p.blind_index),
    }
}

/// One field ciphertext to open, decoded: base64 for the self-describing modes, the text itself for fpe.
struct Sealed {
    mode: FieldMode,
    ciphertext: Vec<u8>,
    field: FieldType,
    context: Context,
    tweak: Option<Vec<u8>>,
    version: Option<u32>,
}

fn prepare_sealed(caller: &Caller, i: UnprotectItem) -> Result<Sealed, ApiError> {
    let mode = match i.mode.as_deref() {
        Some("fpe") => FieldMode::Fpe,
        other => {
            field_mode(other)?;
            FieldMode::Encrypt
        }
    };
    if i.version.is_some() && mode != FieldMode::Fpe {
        return Err(ApiError::validation(
            "version is taken by mode fpe only: other ciphertexts name their version",
        ));
    }
    let ciphertext = if mode == FieldMode::Fpe {
        i.ciphertext.into_bytes()
    } else {
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &i.ciphertext)
            .map_err(|_| ApiError::validation("ciphertext is not base64"))?
    };
    Ok(Sealed {
        mode,
        ciphertext,
        field: field_type(&i.field_type)?,
        context: context(caller, i.context)?,
        tweak: fpe_tweak(mode, i.tweak)?,
        version: i.version,
    })
}

fn run_unprotect(kms: &Kms, key: &str, good: &[Sealed]) -> KmsResult<Vec<KmsResult<String>>> {
    let inputs: Vec<SealedField<'_>> = good
        .iter()
        .map(|s| SealedField {
            mode: s.mode,
            ciphertext: &s.ciphertext,
            field: s.field,
            context: s.context.clone(),
            tweak: s.tweak.as_deref(),
            version: s.version,
        })
        .collect();
    kms.unprotect_fields(key, &inputs)
}

fn prepare_search(_: &Caller, i: BlindIndexItem) -> Result<(String, FieldType), ApiError> {
    Ok((i.value, field_type(&i.field_type)?))
}

fn run_search(
    kms: &Kms,
    key: &str,
    good: &[(String, FieldType)],
) -> KmsResult<Vec<KmsResult<Vec<u8>>>> {
    let inputs: Vec<(&str, FieldType)> = good.iter().map(|(v, t)| (v.as_str(), *t)).collect();
    kms.blind_indexes(key, &inputs)
}

/// `POST /v1/keys/{key}/protect`.
pub async fn protect(
    State(app): State<AppState>,
    meta: Meta,
    Path(key): Path<String>,
    body: RawBody,
) -> Response {
    let (prepare, run, show) = (prepare, run_protect, show_protected);
    field_op::<ProtectItem, _, _, _>(app, meta, key, body, Action::Protect, prepare, run, show)
        .await
}

/// `POST /v1/keys/{key}/unprotect`.
pub async fn unprotect(
    State(app): State<AppState>,
    meta: Meta,
    Path(key): Path<String>,
    body: RawBody,
) -> Response {
    let show = |value| UnprotectedItem { value };
    field_op(
        app,
        meta,
        key,
        body,
        Action::Unprotect,
        prepare_sealed,
        run_unprotect,
        show,
    )
    .await
}

/// `POST /v1/keys/{key}/blind-index`.
pub async fn blind_index(
    State(app): State<AppState>,
    meta: Meta,
    Path(key): Path<String>,
    body: RawBody,
) -> Response {
    let show = |b: Vec<u8>| BlindIndexAnswer {
        blind_index: hex(&b),
    };
    field_op(
        app,
        meta,
        key,
        body,
        Action::BlindIndex,
        prepare_search,
        run_search,
        show,
    )
    .await
}
