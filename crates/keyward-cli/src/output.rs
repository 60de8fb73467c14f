//! Human tables and JSON output.

use keyward_api::{AliasObject, KeyObject, SysStatus, VersionObject};
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

impl Out {
    pub fn value<T: Serialize>(&self, v: &T) {
        match serde_json::to_string_pretty(v) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("cannot print: {e}"),
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
        if let Some(d) = &k.deletion_date {
            rows.push(("deletion_date", d.clone()));
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
}
