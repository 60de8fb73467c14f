//! Cryptographic operations: encrypt and decrypt (files by streaming envelope), data keys, sign and verify, MACs, derivation, agreement, random, CSRs and certificates.

use super::*;

/// Runs one command of this area (the caller dispatches only those here).
pub(crate) async fn run(c: &Client, out: &Out, command: Command) -> Res {
    let e = Failure::from;
    match command {
        Command::Encrypt(a) => {
            let ctx = context(a.context);
            if let Some(file) = a.file {
                let dest = a
                    .out
                    .unwrap_or_else(|| PathBuf::from(format!("{}.kws", file.display())));
                let input = tokio::fs::File::open(&file)
                    .await
                    .map_err(|x| format!("cannot open {}: {x}", file.display()))?;
                let staged = Staged::create(&dest, Access::Ordinary)?;
                let n = envelope::encrypt(
                    c,
                    &a.key,
                    ctx,
                    a.segment,
                    tokio::io::BufReader::new(input),
                    tokio::io::BufWriter::new(staged.async_writer()?),
                )
                .await
                .map_err(|x| x.to_string())?;
                staged.commit()?;
                eprintln!("encrypted {n} bytes into {}", dest.display());
            } else {
                let pt = zeroize::Zeroizing::new(read_input(&a.input)?);
                let body = EncryptBody {
                    plaintext: Some(SecretB64::new(pt.to_vec())),
                    context: ctx,
                    algorithm: a.algorithm,
                    items: None,
                };
                let v = c.encrypt_with(&a.key, &body).await.map_err(|x| match &x {
                    keyward_client::Error::Api { code, .. } if code == "PayloadTooLarge" => {
                        format!(
                            "{x}; for data over 64 KiB use --file (envelope encryption, streamed)"
                        )
                    }
                    _ => x.to_string(),
                })?;
                if out.json {
                    out.value(&v);
                } else {
                    let ct = v
                        .get("ciphertext")
                        .and_then(|x| x.as_str())
                        .unwrap_or_default();
                    write_output(&a.out, format!("{ct}\n").as_bytes(), Access::Ordinary)?;
                }
            }
        }
        Command::Decrypt(a) => {
            let ctx = context(a.context);
            if let Some(file) = a.file {
                let dest = a.out.ok_or("--out is required with --file")?;
                let input = tokio::fs::File::open(&file)
                    .await
                    .map_err(|x| format!("cannot open {}: {x}", file.display()))?;
                // Plaintext is written segment by segment as each verifies; it takes the destination's name
                // only once the whole file has, and is the owner's only from its first byte.
                let staged = Staged::create(&dest, Access::Private)?;
                let n = envelope::decrypt(
                    c,
                    ctx,
                    tokio::io::BufReader::new(input),
                    tokio::io::BufWriter::new(staged.async_writer()?),
                )
                .await
                .map_err(|x| x.to_string())?;
                staged.commit()?;
                eprintln!("decrypted {n} bytes into {}", dest.display());
            } else {
                let input = read_input(&a.input)?;
                let ct = unb64(&String::from_utf8_lossy(&input))?;
                let r = c
                    .decrypt(a.key.as_deref(), &ct, ctx, a.algorithm.as_deref())
                    .await
                    .map_err(e)?;
                if out.json {
                    out.value(&r);
                } else {
                    write_output(&a.out, r.plaintext.expose(), Access::Private)?;
                }
            }
        }
        Command::DataKey {
            key,
            spec,
            context: ctx,
        } => {
            let r = c
                .data_key(
                    &key,
                    &DataKeyRequest {
                        spec,
                        context: context(ctx),
                        include_plaintext: Some(true),
                    },
                )
                .await
                .map_err(e)?;
            out.value(&r);
        }
        Command::Sign(a) => {
            let data = read_input(&a.input)?;
            let (message, digest, external_mu) = match (a.digest, a.external_mu) {
                (true, _) => (None, Some(B64(data)), None),
                (_, true) => (None, None, Some(B64(data))),
                _ => (Some(B64(data)), None, None),
            };
            let r = c
                .sign(
                    &a.key,
                    &SignRequest {
                        message,
                        digest,
                        external_mu,
                        algorithm: algorithm_for(c, &a.key, a.algorithm, Purpose::Sign).await?,
                    },
                )
                .await
                .map_err(e)?;
            if out.json {
                out.value(&r);
            } else {
                println!("{}", b64(&r.signature.0));
            }
        }
        Command::Verify(a) => {
            let data = read_input(&a.input)?;
            let (message, digest, external_mu) = match (a.digest, a.external_mu) {
                (true, _) => (None, Some(B64(data)), None),
                (_, true) => (None, None, Some(B64(data))),
                _ => (Some(B64(data)), None, None),
            };
            let req = VerifyRequest {
                message,
                digest,
                external_mu,
                signature: B64(unb64(&a.signature)?),
                algorithm: algorithm_for(c, &a.key, a.algorithm, Purpose::Sign).await?,
                version: None,
            };
            let valid = c.verify(&a.key, &req).await.map_err(e)?;
            if out.json {
                out.value(&Validity { valid });
            } else {
                println!("{}", if valid { "valid" } else { "INVALID" });
            }
            if !valid {
                return Err("signature is not valid".into());
            }
        }
        Command::Mac {
            key,
            algorithm,
            input,
        } => {
            let r = c
                .mac(
                    &key,
                    &MacRequest {
                        message: B64(read_input(&input)?),
                        algorithm: algorithm_for(c, &key, algorithm, Purpose::Mac).await?,
                    },
                )
                .await
                .map_err(e)?;
            if out.json {
                out.value(&r);
            } else {
                println!("{}", b64(&r.mac.0));
            }
        }
        Command::Random { length } => println!("{}", b64(&c.random(length).await.map_err(e)?)),
        Command::Reencrypt {
            key,
            context: ctx,
            new_context,
            input,
        } => {
            let ct = unb64(&String::from_utf8_lossy(&read_input(&input)?))?;
            let body = ReencryptBody {
                ciphertext: Some(B64(ct)),
                context: context(ctx),
                new_context: context(new_context),
                items: None,
            };
            let r = c.reencrypt(&key, &body).await.map_err(e)?;
            if out.json {
                out.value(&r);
            } else {
                println!("{}", b64(&r.ciphertext.0));
            }
        }
        Command::DataKeyPair { key, spec } => out.value(
            &c.data_key_pair(
                &key,
                &DataKeyPairRequest {
                    spec,
                    context: None,
                    include_plaintext: Some(true),
                },
            )
            .await
            .map_err(e)?,
        ),
        Command::VerifyMac {
            key,
            algorithm,
            mac,
            input,
        } => {
            let req = VerifyMacRequest {
                message: B64(read_input(&input)?),
                mac: B64(unb64(&mac)?),
                algorithm: algorithm_for(c, &key, algorithm, Purpose::Mac).await?,
            };
            let valid = c.verify_mac(&key, &req).await.map_err(e)?;
            println!("{}", if valid { "valid" } else { "INVALID" });
            if !valid {
                return Err("MAC is not valid".into());
            }
        }
        Command::Derive {
            key,
            context: dctx,
            length,
        } => {
            let req = DeriveRequest {
                context: B64(dctx.into_bytes()),
                length,
                include_plaintext: Some(true),
            };
            out.value(&c.derive(&key, &req).await.map_err(e)?);
        }
        Command::Agree { key, peer } => {
            let der =
                std::fs::read(&peer).map_err(|x| format!("cannot read {}: {x}", peer.display()))?;
            let r = c.agree(&key, &der).await.map_err(e)?;
            println!("{}", b64(r.shared_secret.expose()));
        }
        Command::Protect(a) => field_file(c, a, commands::fields::Direction::Protect).await?,
        Command::Unprotect(a) => field_file(c, a, commands::fields::Direction::Unprotect).await?,
        Command::Decapsulate {
            key,
            input,
            version,
            wrapping_key,
            context: ctx,
        } => {
            let ct = std::fs::read(&input)
                .map_err(|x| format!("cannot read {}: {x}", input.display()))?;
            match wrapping_key {
                Some(w) => {
                    let r = c
                        .decapsulate_data_key(&key, &ct, version, &w, context(ctx), false)
                        .await
                        .map_err(e)?;
                    out.value(&r);
                }
                None => {
                    let r = c.decapsulate(&key, &ct, version).await.map_err(e)?;
                    println!("{}", b64(r.shared_secret.expose()));
                }
            }
        }
        Command::Csr { key, subject, sans } => {
            let r = c
                .csr(
                    &key,
                    &CsrRequest {
                        subject,
                        sans: (!sans.is_empty()).then_some(sans),
                    },
                )
                .await
                .map_err(e)?;
            print!("{}", r.csr_pem);
        }
        Command::Certificate {
            key,
            subject,
            csr,
            days,
            ca,
        } => {
            let csr_pem = csr
                .map(|p| {
                    std::fs::read_to_string(&p)
                        .map_err(|x| format!("cannot read {}: {x}", p.display()))
                })
                .transpose()?;
            let r = c
                .certificate(
                    &key,
                    &CertificateRequest {
                        csr_pem,
                        subject,
                        days,
                        is_ca: ca.then_some(true),
                    },
                )
                .await
                .map_err(e)?;
            print!("{}", r.certificate_pem);
        }
        // Commands of other areas are dispatched elsewhere.
        _ => {}
    }
    Ok(())
}

async fn field_file(
    c: &Client,
    a: FieldFileArgs,
    direction: commands::fields::Direction,
) -> Result<(), String> {
    let cols = commands::fields::columns(&a.columns)?;
    let rows = commands::fields::run(
        c,
        &a.key,
        direction,
        &cols,
        a.input.as_deref(),
        &a.out,
        a.format == "jsonl",
        context(a.context),
        a.mode.as_deref(),
    )
    .await?;
    commands::fields::report(rows, &a.out);
    Ok(())
}
