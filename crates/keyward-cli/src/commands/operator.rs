//! Operator: init, unseal, seal, generate-root, rotate-root, backup and restore.

use super::*;

/// Runs one operator command.
pub(crate) async fn run(c: &Client, out: &Out, op: Operator) -> Res {
    let e = Failure::from;
    match op {
        Operator::Init { shares, threshold } => {
            let r = c.init(shares, threshold).await.map_err(e)?;
            if out.json {
                out.value(
                    &serde_json::json!({"shares": r.shares, "root_token": r.root_token,
                    "root_token_id": r.root_token_id}),
                );
            } else {
                for (i, s) in r.shares.iter().enumerate() {
                    println!("Unseal share {}: {}", i + 1, s.as_str());
                }
                println!("Root token: {}", r.root_token.as_str());
                println!("Root token id: {}", r.root_token_id);
                eprintln!(
                    "Once an admin identity has a token of its own, revoke the root token: keyward revoke {}",
                    r.root_token_id
                );
                if r.shares.is_empty() {
                    eprintln!(
                        "The PKCS#11 token holds the root of trust: the service unseals itself."
                    );
                } else {
                    eprintln!("Give each share to a different operator; {threshold} of them unseal the service.");
                }
            }
        }
        Operator::Unseal { share } => {
            let share = match share {
                Some(s) => zeroize::Zeroizing::new(s),
                None if tty::interactive() => {
                    tty::hidden("Unseal share: ", true, "the share").await?
                }
                None => tty::all_of_stdin("the share")?,
            };
            let before = c.status().await.map_err(e)?;
            let after = c.unseal(share.trim()).await.map_err(e)?;
            out.status(&after);
            if after.sealed && after.progress <= before.progress {
                return Err(format!(
                    "that share was given already: still {} of {} (each operator gives a different share)",
                    after.progress, after.threshold
                )
                .into());
            }
        }
        Operator::Seal => {
            c.seal().await.map_err(e)?;
            eprintln!("sealed");
        }
        Operator::Status => out.status(&c.status().await.map_err(e)?),
        Operator::RotateRoot => out.value(&c.rotate_root().await.map_err(e)?),
        Operator::GenerateRoot => {
            let input = if tty::interactive() {
                tty::hidden(
                    "Unseal shares, one per line (an empty line ends): ",
                    false,
                    "the shares",
                )
                .await?
            } else {
                tty::all_of_stdin("the shares")?
            };
            let shares: Vec<&str> = input
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let body = zeroize::Zeroizing::new(
                serde_json::to_vec(&serde_json::json!({ "shares": shares }))
                    .map_err(|x| x.to_string())?,
            );
            let (status, id, resp) = c
                .answer(
                    reqwest::Method::POST,
                    "/v1/sys/generate-root",
                    Some(body.to_vec()),
                )
                .await
                .map_err(e)?;
            print_raw(out, status, id.as_deref(), &resp)?;
        }
        Operator::Backup { output } => {
            let bytes = c.backup().await.map_err(e)?;
            files::write(&output, &bytes, Access::Private)?;
            eprintln!(
                "backup written to {} ({} bytes)",
                output.display(),
                bytes.len()
            );
        }
        Operator::Restore {
            input,
            shares_file,
            force,
        } => {
            let backup = std::fs::read(&input)
                .map_err(|x| format!("cannot read {}: {x}", input.display()))?;
            let shares = match shares_file {
                None => None,
                Some(p) => {
                    let text = zeroize::Zeroizing::new(
                        std::fs::read_to_string(&p)
                            .map_err(|x| format!("cannot read {}: {x}", p.display()))?,
                    );
                    Some(
                        text.lines()
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .map(|l| zeroize::Zeroizing::new(l.to_string()))
                            .collect(),
                    )
                }
            };
            let r = c
                .restore(&RestoreRequest {
                    backup: B64(backup),
                    shares,
                    force,
                })
                .await
                .map_err(e)?;
            if out.json {
                out.value(&r);
            } else if r.initialized {
                println!(
                    "Restored {} key(s); the service was initialised from the backup.",
                    r.restored_keys
                );
            } else {
                println!(
                    "Restored {} key(s) into the running service.",
                    r.restored_keys
                );
            }
        }
    }
    Ok(())
}
