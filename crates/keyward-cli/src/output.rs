//! Human tables and JSON output.

use keyward_api::{AliasObject, ApprovalObject, KeyObject, PolicyDoc, SysStatus, VersionObject};
use serde::Serialize;

pub struct Out {
    pub json: bool,
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

/// A field's value in a table: a time given in unix seconds (`expires_at` of an approval) in RFC 3339 like
/// every other time the tables show, anything else as [`cell`] writes it.
fn field_cell(name: &str, v: &serde_json::Value) -> String {
    let as_time = (name.ends_with("_at") || name.ends_with("_date"))
        .then(|| v.as_i64())
        .flatten()
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        });
    as_time.unwrap_or_else(|| cell(v))
}

/// A value in a table cell: strings as they are, nested values as compact JSON.
fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Out {
    /// Prints a response: a FIELD/VALUE table for people, pretty JSON with `--json` (and for anything that
    /// is not an object).
    pub fn value<T: Serialize>(&self, v: &T) {
        if !self.json {
            if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(v) {
                return table(
                    &["FIELD", "VALUE"],
                    map.iter()
                        .map(|(k, v)| vec![k.clone(), field_cell(k, v)])
                        .collect(),
                );
            }
        }
        Self::document(v);
    }

    /// Prints pretty JSON whatever the output mode: for documents meant to be kept as they are (a signed
    /// checkpoint).
    pub fn document<T: Serialize>(v: &T) {
        match serde_json::to_string_pretty(v) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("cannot print: {e}"),
        }
    }

    /// A page of audit records (`GET /v1/audit`): one line each, without the hashes (`--json` has them).
    /// One page of the audit log: a table, or the API's JSON.
    pub fn audit(&self, page: &serde_json::Value) {
        if self.json {
            return Self::document(page);
        }
        let records = page["records"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        table(
            &[
                "SEQ",
                "TIME",
                "PRINCIPAL",
                "SOURCE",
                "ACTION",
                "KEY",
                "RESOURCE",
                "VERSION",
                "OUTCOME",
                "ERROR",
                "REQUEST ID",
            ],
            records
                .iter()
                .map(|r| AUDIT_FIELDS.iter().map(|f| cell(&r[*f])).collect())
                .collect(),
        );
        if let Some(next) = page["next_token"].as_str() {
            println!("(more records: --next-token {next} for the next page, --all for every one)");
        }
    }

    pub fn key(&self, k: &KeyObject) {
        if self.json {
            return self.value(k);
        }
        let mut rows = vec![
            ("key_id", k.key_id.clone()),
            ("alias", k.alias.clone().unwrap_or_default()),
            ("spec", k.spec.clone()),
            ("usage", k.usage.clone()),
            ("state", k.state.clone()),
            ("origin", k.origin.clone()),
            ("primary_version", k.primary_version.to_string()),
            (
                "min_decryption_version",
                k.min_decryption_version.to_string(),
            ),
            ("created_at", k.created_at.clone()),
            ("description", k.description.clone()),
        ];
        if let Some(d) = k.rotation_period_days {
            rows.push(("rotation_period_days", d.to_string()));
        }
        if let Some(d) = &k.next_rotation_at {
            rows.push(("next_rotation_at", d.clone()));
        }
        if let Some(d) = &k.last_rotated_at {
            rows.push(("last_rotated_at", d.clone()));
        }
        if let Some(d) = &k.deletion_date {
            rows.push(("deletion_date", d.clone()));
        }
        if let Some(q) = &k.quorum {
            rows.push(("quorum", format!("{} approvals", q.approvals)));
        }
        if k.exportable {
            rows.push(("exportable", "true".into()));
        }
        if !k.encryption_algorithms.is_empty() {
            rows.push(("encryption_algorithms", k.encryption_algorithms.join(", ")));
        }
        for (t, v) in &k.tags {
            rows.push(("tag", format!("{t}={v}")));
        }
        table(
            &["FIELD", "VALUE"],
            rows.into_iter()
                .map(|(a, b)| vec![a.to_string(), b])
                .collect(),
        );
    }

    pub fn keys(&self, keys: &[KeyObject]) {
        if self.json {
            return self.value(&keys);
        }
        table(
            &["KEY ID", "ALIAS", "SPEC", "USAGE", "STATE", "PRIMARY"],
            keys.iter()
                .map(|k| {
                    vec![
                        k.key_id.clone(),
                        k.alias.clone().unwrap_or_default(),
                        k.spec.clone(),
                        k.usage.clone(),
                        k.state.clone(),
                        k.primary_version.to_string(),
                    ]
                })
                .collect(),
        );
    }

    pub fn versions(&self, v: &[VersionObject]) {
        if self.json {
            return self.value(&v);
        }
        table(
            &["VERSION", "STATE", "CREATED", "DESTROYED"],
            v.iter()
                .map(|v| {
                    vec![
                        v.version.to_string(),
                        v.state.clone(),
                        v.created_at.clone(),
                        v.destroyed_at.clone().unwrap_or_default(),
                    ]
                })
                .collect(),
        );
    }

    /// Identities (`GET /v1/identities`): one line each.
    pub fn identities(&self, list: &[serde_json::Value]) {
        if self.json {
            return self.value(&list);
        }
        let joined = |v: &serde_json::Value| {
            v.as_array()
                .map(|a| a.iter().map(cell).collect::<Vec<_>>().join(","))
                .unwrap_or_default()
        };
        table(
            &[
                "NAME", "KIND", "ROLES", "POLICIES", "PASSWORD", "MFA", "CREATED",
            ],
            list.iter()
                .map(|i| {
                    vec![
                        cell(&i["name"]),
                        cell(&i["kind"]),
                        joined(&i["roles"]),
                        joined(&i["policies"]),
                        cell(&i["password"]),
                        cell(&i["mfa"]),
                        cell(&i["created_at"]),
                    ]
                })
                .collect(),
        );
    }

    /// An identity's tokens (`GET /v1/identities/{name}/tokens`).
    pub fn tokens(&self, list: &[serde_json::Value]) {
        if self.json {
            return self.value(&list);
        }
        table(
            &["TOKEN ID", "CREATED", "EXPIRES", "MFA"],
            list.iter()
                .map(|t| {
                    ["token_id", "created_at", "expires_at", "mfa"]
                        .iter()
                        .map(|f| cell(&t[*f]))
                        .collect()
                })
                .collect(),
        );
    }

    pub fn aliases(&self, a: &[AliasObject]) {
        if self.json {
            return self.value(&a);
        }
        table(
            &["ALIAS", "KEY ID"],
            a.iter()
                .map(|a| vec![a.alias.clone(), a.key_id.clone()])
                .collect(),
        );
    }

    pub fn status(&self, s: &SysStatus) {
        if self.json {
            return self.value(s);
        }
        table(
            &["FIELD", "VALUE"],
            vec![
                vec!["initialized".into(), s.initialized.to_string()],
                vec!["sealed".into(), s.sealed.to_string()],
                vec!["threshold".into(), s.threshold.to_string()],
                vec!["shares".into(), s.shares.to_string()],
                vec!["progress".into(), s.progress.to_string()],
                vec![
                    "root_of_trust".into(),
                    s.root_of_trust.clone().unwrap_or_default(),
                ],
            ],
        );
    }

    /// A policy: one line per statement; `--json` prints the document as stored.
    pub fn policy(&self, doc: &PolicyDoc) {
        if self.json {
            return self.value(doc);
        }
        table(
            &["EFFECT", "ACTIONS", "RESOURCES", "CONDITIONS"],
            doc.statements
                .iter()
                .map(|st| {
                    vec![
                        st.effect.clone(),
                        st.actions.join(","),
                        st.resources.join(","),
                        st.conditions
                            .as_ref()
                            .and_then(|c| serde_json::to_value(c).ok())
                            .map(|v| cell(&v))
                            .unwrap_or_default(),
                    ]
                })
                .collect(),
        );
    }

    /// Approval requests: what each would run, on what, and how far its quorum is.
    pub fn approvals(&self, list: &[ApprovalObject]) {
        if self.json {
            return self.value(&list);
        }
        table(
            &[
                "APPROVAL ID",
                "STATUS",
                "OPERATION",
                "TARGET",
                "REQUESTED BY",
                "APPROVALS",
                "CREATED",
            ],
            list.iter()
                .map(|a| {
                    let target = ["key_id", "name"]
                        .iter()
                        .find_map(|f| a.parameters.get(*f).map(cell))
                        .unwrap_or_default();
                    vec![
                        a.approval_id.clone(),
                        a.status.clone(),
                        a.operation.clone(),
                        target,
                        a.requested_by.clone(),
                        format!("{}/{}", a.approvals.len(), a.required),
                        a.created_at.clone(),
                    ]
                })
                .collect(),
        );
    }
}

/// The fields of an audit record, in the order of the audit table's columns.
const AUDIT_FIELDS: [&str; 11] = [
    "seq",
    "time",
    "principal",
    "source_ip",
    "action",
    "key_id",
    "resource",
    "version",
    "outcome",
    "error_code",
    "request_id",
];

/// One audit record on one line, fields in the order of the audit table, for `audit --follow`.
pub fn audit_line(r: &serde_json::Value) -> String {
    AUDIT_FIELDS
        .iter()
        .map(|f| match cell(&r[*f]) {
            c if c.is_empty() => "-".to_string(),
            c => c,
        })
        .collect::<Vec<_>>()
        .join("  ")
}
