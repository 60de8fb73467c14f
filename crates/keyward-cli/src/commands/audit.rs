//! Audit and compliance: query, follow, verify, prune with an archive, checkpoints, metrics and the compliance report.

use super::*;

/// Runs one command of this area (the caller dispatches only those here).
pub(crate) async fn run(c: &Client, out: &Out, command: Command) -> Res {
    let e = Failure::from;
    match command {
        Command::Audit { verify: true, .. } => {
            let v = get_json(c, "/v1/audit/verify").await?;
            out.value(&v);
            if v["valid"] != serde_json::Value::Bool(true) {
                return Err("the audit chain does not verify".into());
            }
        }
        Command::Audit {
            verify_archive: Some(path),
            prev_hash,
            ..
        } => {
            let v = verify_archive_file(c, &path, prev_hash).await?;
            out.value(&v);
            if v["valid"] != serde_json::Value::Bool(true) {
                return Err(format!("{} does not verify", path.display()).into());
            }
        }
        Command::Audit {
            prune_through: Some(through),
            archive,
            ..
        } => {
            if let Some(path) = &archive {
                archive_audit(c, path, through).await?;
            }
            match c.prune_audit(through).await {
                Ok(v) => out.value(&v),
                Err(refused) => {
                    // Nothing was pruned: the archive of records that stay is taken back, so that a retry
                    // starts afresh.
                    if let Some(path) = &archive {
                        let _ = std::fs::remove_file(path);
                    }
                    return Err(e(refused));
                }
            }
        }
        Command::Audit {
            verify: false,
            principal,
            key,
            resource,
            request_id,
            action,
            outcome,
            since,
            until,
            limit,
            all,
            next_token,
            follow,
            prune_through: None,
            filter,
            ..
        } => {
            let since = match (follow, since) {
                (true, None) => time::OffsetDateTime::now_utc()
                    .replace_nanosecond(0)
                    .ok()
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    }),
                (_, since) => since,
            };
            let limit = limit.map(|n| n.to_string());
            let mut url =
                reqwest::Url::parse("http://keyward/v1/audit").map_err(|x| x.to_string())?;
            {
                let mut q = url.query_pairs_mut();
                for (name, value) in [
                    ("principal", principal),
                    ("key_id", key),
                    ("resource", resource),
                    ("request_id", request_id),
                    ("action", action),
                    ("outcome", outcome),
                    ("since", since),
                    ("until", until),
                    ("limit", limit),
                    ("next_token", next_token),
                ] {
                    if let Some(value) = value {
                        q.append_pair(name, &value);
                    }
                }
            }
            let mut query = url.query().unwrap_or_default().to_string();
            if !filter.is_empty() {
                if !query.is_empty() {
                    query.push('&');
                }
                query.push_str(&filter);
            }
            let path = |next: Option<&str>| {
                let mut p = format!("/v1/audit?{query}");
                if let Some(t) = next {
                    p.push_str(&format!("&next_token={t}"));
                }
                p
            };
            if follow {
                return follow_audit(c, out, &path).await;
            }
            let mut page = get_json(c, &path(None)).await?;
            if !all {
                out.audit(&page);
                return Ok(());
            }
            // Page after page; as JSON each record is printed as soon as it arrives, so an export of the
            // whole log runs in constant memory.
            let mut kept = Vec::new();
            loop {
                let records = match page["records"].take() {
                    serde_json::Value::Array(r) => r,
                    _ => Vec::new(),
                };
                if out.json {
                    let mut stdout = std::io::stdout().lock();
                    for r in &records {
                        writeln!(stdout, "{r}").map_err(Failure::from)?;
                    }
                } else {
                    kept.extend(records);
                }
                let Some(next) = page["next_token"].as_str().map(str::to_string) else {
                    break;
                };
                page = get_json(c, &path(Some(&next))).await?;
            }
            if !out.json {
                out.audit(&serde_json::json!({ "records": kept }));
            }
        }
        Command::Metrics => {
            let text = c.metrics().await.map_err(e)?;
            if out.json {
                out.value(&metrics_json(&text));
            } else {
                print!("{text}");
            }
        }
        Command::Report {
            html,
            dormant_days,
            out: dest,
        } => {
            let format = if html { "html" } else { "json" };
            let path =
                format!("/v1/reports/compliance?format={format}&dormant_days={dormant_days}");
            let (status, id, body) = c
                .answer(reqwest::Method::GET, &path, None)
                .await
                .map_err(e)?;
            if !status.is_success() {
                return print_raw(out, status, id.as_deref(), &body);
            }
            if html || dest.is_some() {
                write_output(&dest, &body, Access::Ordinary)?;
            } else {
                let report: serde_json::Value = serde_json::from_slice(&body)
                    .map_err(|x| format!("the report does not parse: {x}"))?;
                if out.json {
                    out.value(&report);
                } else {
                    out.value(&report_summary(&report));
                    eprintln!("The whole report: keyward --json report, or keyward report --html --out report.html");
                }
            }
        }
        Command::Checkpoint => {
            let (status, id, body) = c
                .answer(reqwest::Method::GET, "/v1/audit/checkpoint", None)
                .await
                .map_err(e)?;
            // The checkpoint is a document to keep: JSON whatever the output mode.
            print_raw(&Out { json: true }, status, id.as_deref(), &body)?;
        }
        // Commands of other areas are dispatched elsewhere.
        _ => {}
    }
    Ok(())
}

/// Sends an archive to `POST /v1/audit/verify-archive` in parts of 500 records, each part chained onto the
/// previous part's head; returns the last answer, its `records` counting the whole file.
async fn verify_archive_file(
    c: &Client,
    path: &std::path::Path,
    mut prev_hash: Option<String>,
) -> Result<serde_json::Value, Failure> {
    use std::io::BufRead as _;
    let file = std::fs::File::open(path).map_err(|x| format!("{}: {x}", path.display()))?;
    let mut lines = std::io::BufReader::new(file).lines();
    let mut checked = 0u64;
    let mut last = None;
    loop {
        let mut part = Vec::with_capacity(500);
        for line in lines.by_ref() {
            let line = line.map_err(|x| format!("{}: {x}", path.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            let record: serde_json::Value = serde_json::from_str(&line).map_err(|_| {
                format!(
                    "{}: line {} is not JSON",
                    path.display(),
                    checked + part.len() as u64 + 1
                )
            })?;
            part.push(record);
            if part.len() == 500 {
                break;
            }
        }
        if part.is_empty() {
            break;
        }
        let body = serde_json::json!({ "records": part, "prev_hash": prev_hash });
        let (status, id, answer) = c
            .answer(
                reqwest::Method::POST,
                "/v1/audit/verify-archive",
                Some(serde_json::to_vec(&body).map_err(|x| x.to_string())?),
            )
            .await
            .map_err(Failure::from)?;
        let mut v: serde_json::Value =
            serde_json::from_slice(&answer).map_err(|x| x.to_string())?;
        if !status.is_success() {
            return Err(api_error(status, id.as_deref(), &v).into());
        }
        checked += v["records"].as_u64().unwrap_or(0);
        v["records"] = checked.into();
        if v["valid"] != serde_json::Value::Bool(true) {
            return Ok(v);
        }
        prev_hash = v["head"].as_str().map(str::to_string);
        last = Some(v);
    }
    last.ok_or_else(|| format!("{} holds no records", path.display()).into())
}

/// Writes the audit records up to `through` to a new file as JSON lines and flushes it: the archive of what
/// a pruning is about to delete. Refuses an archive that would not end at `through`.
async fn archive_audit(c: &Client, path: &std::path::Path, through: u64) -> Result<(), Failure> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|x| format!("{}: {x}", path.display()))?;
    let written = write_archive(c, path, file, through).await;
    if written.is_err() {
        // The file is this run's own (created new): an archive that failed is not left to look whole.
        let _ = std::fs::remove_file(path);
    }
    written
}

async fn write_archive(
    c: &Client,
    path: &std::path::Path,
    file: std::fs::File,
    through: u64,
) -> Result<(), Failure> {
    let mut w = std::io::BufWriter::new(file);
    let mut after: Option<u64> = None;
    let mut last = None;
    'pages: loop {
        let page = get_json(
            c,
            &match after {
                Some(a) => format!("/v1/audit?limit=1000&next_token={a}"),
                None => "/v1/audit?limit=1000".to_string(),
            },
        )
        .await?;
        let records = page["records"].as_array().cloned().unwrap_or_default();
        for r in &records {
            let seq = r["seq"]
                .as_u64()
                .ok_or("an audit record without a sequence number")?;
            if seq > through {
                break 'pages;
            }
            writeln!(w, "{r}").map_err(|x| format!("{}: {x}", path.display()))?;
            last = Some(seq);
        }
        match records.last().and_then(|r| r["seq"].as_u64()) {
            Some(seq) if !page["next_token"].is_null() => after = Some(seq),
            _ => break,
        }
    }
    let file = w
        .into_inner()
        .map_err(|x| format!("{}: {}", path.display(), x.error()))?;
    file.sync_all()
        .map_err(|x| format!("{}: {x}", path.display()))?;
    if last != Some(through) {
        return Err(format!(
            "the archive would not end at record {through} (it ends at {}); nothing is pruned",
            last.map_or("no record".to_string(), |l| l.to_string())
        )
        .into());
    }
    Ok(())
}

/// `keyward audit --follow`: polls for the records after the last one printed, once a second when caught up,
/// and prints each as it comes (a JSON line with `--json`).
async fn follow_audit(
    c: &Client,
    out: &output::Out,
    path: impl Fn(Option<&str>) -> String,
) -> Result<(), Failure> {
    let mut after: Option<String> = None;
    loop {
        let page = get_json(c, &path(after.as_deref())).await?;
        let records = page["records"].as_array().cloned().unwrap_or_default();
        {
            let mut stdout = std::io::stdout().lock();
            for r in &records {
                let line = if out.json {
                    r.to_string()
                } else {
                    output::audit_line(r)
                };
                writeln!(stdout, "{line}").map_err(Failure::from)?;
            }
            stdout.flush().map_err(Failure::from)?;
        }
        if let Some(last) = records.last().and_then(|r| r["seq"].as_u64()) {
            after = Some(last.to_string());
        }
        if page["next_token"].is_null() {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
}

/// Prometheus text as a JSON object: each sample's name (with its labels) and value.
fn metrics_json(text: &str) -> serde_json::Value {
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            Some((name.to_string(), serde_json::json!(value)))
        })
        .collect::<serde_json::Map<_, _>>();
    serde_json::Value::Object(samples)
}

/// What a reader needs first of the compliance report: whether the chain holds, and how many of each
/// finding there are.
fn report_summary(r: &serde_json::Value) -> serde_json::Value {
    let count = |field: &str| r[field].as_array().map_or(0, Vec::len);
    let flagged = r["identities"].as_array().map_or(0, |ids| {
        ids.iter()
            .filter(|i| i["findings"].as_array().is_some_and(|f| !f.is_empty()))
            .count()
    });
    serde_json::json!({
        "audit_chain_valid": r["audit_chain_valid"],
        "audit_chain_problem": r["audit_chain_problem"],
        "generated_at": r["generated_at"],
        "node_id": r["node_id"],
        "keys": r["inventory"]["total"],
        "rotation_overdue": r["rotation_overdue"],
        "weak_keys": count("weak_keys"),
        "pending_deletions": count("pending_deletions"),
        "dormant_keys": count("dormant_keys"),
        "refused_and_failed": count("refused_and_failed"),
        "identities": count("identities"),
        "identities_with_findings": flagged,
        "root_tokens_live": r["root_tokens_live"],
        "audit_records": r["audit_records"],
    })
}
