//! Nested request objects that must be JSON objects.
//!
//! serde's derived `Deserialize` for a struct also accepts a sequence and fills the fields by position, so
//! `"quorum": [2]` would be read as `{"approvals": 2}` and a batch item `["key", "data"]` as a request. A
//! client that sends such a body has made a mistake the service must refuse, not guess at. The server checks
//! that the body itself is an object; the fields below hold objects inside it and say so with
//! `#[serde(deserialize_with = ...)]`. Refused values read "expected an object", which is safe to repeat.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// A `T` read only from a JSON object: the map is handed to `T`'s own visitor, so its field rules (unknown
/// fields, defaults) still apply.
#[repr(transparent)]
struct Obj<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjVisitor<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(ObjVisitor(PhantomData)).map(Obj)
    }
}

/// An optional object (`null` or absent reads as `None`).
pub(crate) fn option<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Obj<T>>::deserialize(d)?.map(|Obj(t)| t))
}

/// An array of objects.
pub(crate) fn objects<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Vec::<Obj<T>>::deserialize(d)?
        .into_iter()
        .map(|Obj(t)| t)
        .collect())
}

/// An optional array of objects.
pub(crate) fn option_objects<'de, D, T>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<Obj<T>>>::deserialize(d)?
        .map(|items| items.into_iter().map(|Obj(t)| t).collect()))
}

/// An optional field whose absence means its default (an empty list, `false`): `null` means the same, as it
/// does for every optional field of a request.
pub fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use crate::{CreateKeyRequest, DecryptBody, EncryptBody, PolicyDoc, ReencryptBody};

    fn refused<T: for<'de> serde::Deserialize<'de>>(body: &str) -> String {
        match serde_json::from_str::<T>(body) {
            Ok(_) => panic!("accepted {body}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn nested_objects_given_as_arrays_are_refused() {
        let e = refused::<CreateKeyRequest>(r#"{"spec": "AES_256", "quorum": [2]}"#);
        assert!(e.contains("expected an object"), "{e}");
        refused::<EncryptBody>(r#"{"items": [["alias/a", "aGk="]]}"#);
        refused::<DecryptBody>(r#"{"items": [["Y3Q="]]}"#);
        refused::<ReencryptBody>(r#"{"items": [["Y3Q=", "alias/b"]]}"#);
        refused::<PolicyDoc>(r#"{"statements": [["allow", ["kms:*"], ["*"]]]}"#);
        refused::<PolicyDoc>(
            r#"{"statements": [{"effect": "allow", "actions": [], "resources": [], "conditions": [{}]}]}"#,
        );
    }

    #[test]
    fn null_means_the_default() {
        let r: crate::RestoreRequest =
            serde_json::from_str(r#"{"backup": "AA==", "force": null}"#).unwrap();
        assert!(!r.force);
        let r: crate::RestoreRequest =
            serde_json::from_str(r#"{"backup": "AA==", "force": true}"#).unwrap();
        assert!(r.force);
        refused::<crate::RestoreRequest>(r#"{"backup": "AA==", "force": "yes"}"#);
    }

    #[test]
    fn nested_objects_keep_their_own_rules() {
        let ok: CreateKeyRequest =
            serde_json::from_str(r#"{"spec": "AES_256", "quorum": {"approvals": 2}}"#).unwrap();
        assert_eq!(ok.quorum.map(|q| q.approvals), Some(2));
        let none: CreateKeyRequest =
            serde_json::from_str(r#"{"spec": "AES_256", "quorum": null}"#).unwrap();
        assert!(none.quorum.is_none());
        let e = refused::<CreateKeyRequest>(r#"{"spec": "AES_256", "quorum": {"approvls": 2}}"#);
        assert!(e.contains("unknown field"), "{e}");
        refused::<CreateKeyRequest>(r#"{"spec": "AES_256", "quorum": {}}"#);
        let batch: EncryptBody =
            serde_json::from_str(r#"{"items": [{"plaintext": "aGk="}]}"#).unwrap();
        assert_eq!(batch.items.map(|i| i.len()), Some(1));
        let policy: PolicyDoc = serde_json::from_str(
            r#"{"statements": [{"effect": "allow", "actions": ["kms:*"], "resources": ["*"],
                "conditions": {"mfa": true}}]}"#,
        )
        .unwrap();
        assert_eq!(
            policy.statements[0].conditions.as_ref().and_then(|c| c.mfa),
            Some(true)
        );
    }
}
