//! Keys and aliases: create, list, show, update, lifecycle, versions, import and export.

use super::*;

/// Runs one command of this area (the caller dispatches only those here).
pub(crate) async fn run(c: &Client, out: &Out, command: Command) -> Res {
    let e = Failure::from;
    match command {
        Command::Key(k) => match k {
            KeyCmd::Create(a) => {
                let req = CreateKeyRequest {
                    spec: a.spec,
                    usage: a.usage,
                    description: a.description,
                    alias: a.alias,
                    tags: (!a.tags.is_empty()).then(|| a.tags.into_iter().collect()),
                    rotation_period_days: a.rotation_days,
                    exportable: a.exportable.then_some(true),
                    origin: a.origin,
                    quorum: a.quorum.map(|approvals| Quorum { approvals }),
                    allow_legacy: a.allow_legacy.then_some(true),
                    blind_index_bits: a.blind_index_bits,
                };
                out.key(&c.create_key(&req).await.map_err(e)?);
            }
            KeyCmd::List {
                state,
                spec,
                tag,
                limit,
            } => {
                let mut q = Vec::new();
                // The API's filter spells a tag key:value.
                let tag = tag.map(|(k, v)| format!("{k}:{v}"));
                // Pages of at most what is still wanted: `--limit` bounds what is printed, not a page.
                let page_size = limit.map(|l| l.clamp(1, 1000));
                for (k, v) in [
                    ("state", state),
                    ("spec", spec),
                    ("tag", tag),
                    ("limit", page_size.map(|l| l.to_string())),
                ] {
                    if let Some(v) = v {
                        q.push(format!("{k}={}", keyward_client::segment(&v)));
                    }
                }
                let mut all = Vec::new();
                let mut query = q.join("&");
                loop {
                    let page = c.list_keys(&query).await.map_err(e)?;
                    all.extend(page.keys);
                    if limit.is_some_and(|l| all.len() >= l) {
                        all.truncate(limit.unwrap_or_default());
                        break;
                    }
                    match page.next_token {
                        Some(t) => {
                            query = [q.join("&"), format!("next_token={t}")]
                                .iter()
                                .filter(|s| !s.is_empty())
                                .cloned()
                                .collect::<Vec<_>>()
                                .join("&")
                        }
                        None => break,
                    }
                }
                out.keys(&all);
            }
            KeyCmd::Show { key } => out.key(&c.describe_key(&key).await.map_err(e)?),
            KeyCmd::Update {
                key,
                description,
                tags,
                rotation_days,
                no_rotation,
                min_decryption_version,
            } => {
                let req = UpdateKeyRequest {
                    description,
                    tags: (!tags.is_empty()).then(|| tags.into_iter().collect()),
                    rotation_period_days: if no_rotation {
                        Some(None)
                    } else {
                        rotation_days.map(Some)
                    },
                    min_decryption_version,
                };
                out.key(&c.update_key(&key, &req).await.map_err(e)?);
            }
            KeyCmd::Enable { key } => out.key(&c.key_action(&key, "enable").await.map_err(e)?),
            KeyCmd::Disable { key } => out.key(&c.key_action(&key, "disable").await.map_err(e)?),
            KeyCmd::Rotate { key } => out.key(&c.key_action(&key, "rotate").await.map_err(e)?),
            KeyCmd::CancelDeletion { key } => {
                out.key(&c.key_action(&key, "cancel-deletion").await.map_err(e)?)
            }
            KeyCmd::Versions { key } => out.versions(&c.versions(&key).await.map_err(e)?.versions),
            KeyCmd::Version {
                key,
                version,
                action,
            } => out.versions(&[c.version_action(&key, version, &action).await.map_err(e)?]),
            KeyCmd::Primary { key, version } => {
                out.key(&c.set_primary(&key, version).await.map_err(e)?)
            }
            KeyCmd::ScheduleDeletion { key, days } => {
                out.key(&c.schedule_deletion(&key, days).await.map_err(e)?)
            }
            KeyCmd::PublicKey { key } => {
                let pk = c.public_key(&key).await.map_err(e)?;
                if out.json {
                    out.value(&pk);
                } else {
                    print!("{}", pk.public_key_pem);
                }
            }
            KeyCmd::Import { key, material } => {
                let material =
                    zeroize::Zeroizing::new(std::fs::read(&material).map_err(|x| x.to_string())?);
                let params = c.import_parameters(&key).await.map_err(e)?;
                let wrapped =
                    keyward_client::byok::wrap(&params.wrapping_public_key_der.0, &material)
                        .map_err(e)?;
                let req = ImportRequest {
                    import_token: params.import_token,
                    wrapped_key_material: SecretB64::new(wrapped),
                };
                out.key(&c.import(&key, &req).await.map_err(e)?);
            }
            KeyCmd::DeleteImportedMaterial { key } => {
                out.key(&c.delete_imported_material(&key).await.map_err(e)?)
            }
            KeyCmd::Export {
                key,
                wrapping_key,
                version,
            } => {
                let spki = std::fs::read(&wrapping_key).map_err(|x| x.to_string())?;
                let r = c
                    .export(
                        &key,
                        &ExportRequest {
                            wrapping_public_key_der: B64(spki),
                            version,
                        },
                    )
                    .await
                    .map_err(e)?;
                println!("{}", b64(&r.wrapped_key_material.0));
            }
        },
        Command::Alias(a) => match a {
            AliasCmd::Set { name, key } => out.value(&c.put_alias(&name, &key).await.map_err(e)?),
            AliasCmd::Delete { name } => c.delete_alias(&name).await.map_err(e)?,
            AliasCmd::List => {
                let mut all = Vec::new();
                let mut query = String::new();
                loop {
                    let page = c.list_aliases(&query).await.map_err(e)?;
                    all.extend(page.aliases);
                    match page.next_token {
                        Some(t) => query = format!("next_token={t}"),
                        None => break,
                    }
                }
                out.aliases(&all);
            }
        },
        // Commands of other areas are dispatched elsewhere.
        _ => {}
    }
    Ok(())
}
