//! Identities, tokens, sign-in, policies, approvals and MFA.

use super::*;

/// Runs one command of this area (the caller dispatches only those here).
pub(crate) async fn run(c: &Client, out: &Out, command: Command) -> Res {
    let e = Failure::from;
    match command {
        Command::Identity(IdentityCmd::Create {
            name,
            kind,
            roles,
            policies,
            password_stdin,
            certificate_subject,
        }) => {
            let pw = match (password_stdin, tty::interactive()) {
                (false, _) => None,
                (true, true) => Some(tty::new_password().await?),
                (true, false) => Some(tty::all_of_stdin("the password")?),
            };
            let password = pw.as_ref().map(|p| p.trim_end_matches('\n'));
            let body = NewIdentityBody {
                name: &name,
                kind: &kind,
                roles: &roles,
                policies: &policies,
                password,
                certificate_subject: certificate_subject.as_deref(),
            };
            let named = name.len() + kind.len() + roles.concat().len() + policies.concat().len();
            let capacity = 128
                + 8 * (roles.len() + policies.len())
                + 6 * (named + password.map_or(0, str::len));
            let bytes = secret_json(&body, capacity)?;
            let (status, id, resp) = c
                .answer(
                    reqwest::Method::POST,
                    "/v1/identities",
                    Some(bytes.to_vec()),
                )
                .await
                .map_err(e)?;
            print_raw(out, status, id.as_deref(), &resp)?;
        }
        Command::Identity(IdentityCmd::List) => {
            let all = list_all(c, "/v1/identities", "identities").await?;
            out.identities(&all);
        }
        Command::Identity(IdentityCmd::Show { name }) => {
            let path = format!("/v1/identities/{}", keyward_client::segment(&name));
            let (status, id, resp) = c
                .answer(reqwest::Method::GET, &path, None)
                .await
                .map_err(e)?;
            print_raw(out, status, id.as_deref(), &resp)?;
        }
        Command::Identity(IdentityCmd::Update {
            name,
            roles,
            no_roles,
            policies,
            no_policies,
        }) => {
            let mut body = serde_json::Map::new();
            if no_roles || !roles.is_empty() {
                body.insert("roles".into(), roles.into());
            }
            if no_policies || !policies.is_empty() {
                body.insert("policies".into(), policies.into());
            }
            if body.is_empty() {
                return Err("give --role, --policy, --no-roles or --no-policies".into());
            }
            let path = format!("/v1/identities/{}", keyward_client::segment(&name));
            let bytes = serde_json::to_vec(&body).map_err(|x| x.to_string())?;
            let (status, id, resp) = c
                .answer(reqwest::Method::PATCH, &path, Some(bytes))
                .await
                .map_err(e)?;
            print_raw(out, status, id.as_deref(), &resp)?;
        }
        Command::Identity(IdentityCmd::Tokens { name }) => {
            let path = format!("/v1/identities/{}/tokens", keyward_client::segment(&name));
            out.tokens(&list_all(c, &path, "tokens").await?);
        }
        Command::Identity(IdentityCmd::Delete { name }) => {
            let path = format!("/v1/identities/{}", keyward_client::segment(&name));
            let (status, id, resp) = c
                .answer(reqwest::Method::DELETE, &path, None)
                .await
                .map_err(e)?;
            if !status.is_success() {
                print_raw(out, status, id.as_deref(), &resp)?;
            }
        }
        Command::AccessKey(cmd) => {
            let (method, path) = match &cmd {
                AccessKeyCmd::Create { identity } | AccessKeyCmd::List { identity } => {
                    let method = match cmd {
                        AccessKeyCmd::Create { .. } => reqwest::Method::POST,
                        _ => reqwest::Method::GET,
                    };
                    let path = format!(
                        "/v1/identities/{}/access-keys",
                        keyward_client::segment(identity)
                    );
                    (method, path)
                }
                AccessKeyCmd::Delete {
                    identity,
                    access_key_id,
                } => (
                    reqwest::Method::DELETE,
                    format!(
                        "/v1/identities/{}/access-keys/{}",
                        keyward_client::segment(identity),
                        keyward_client::segment(access_key_id)
                    ),
                ),
            };
            let (status, id, resp) = c.answer(method, &path, None).await.map_err(e)?;
            if !(status.is_success() && resp.is_empty()) {
                print_raw(out, status, id.as_deref(), &resp)?;
            }
        }
        Command::Token { name, ttl } => {
            let body = serde_json::to_vec(&serde_json::json!({"ttl_seconds": ttl}))
                .map_err(|x| x.to_string())?;
            let (status, id, resp) = c
                .answer(
                    reqwest::Method::POST,
                    &format!("/v1/identities/{}/tokens", keyward_client::segment(&name)),
                    Some(body),
                )
                .await
                .map_err(e)?;
            print_raw(out, status, id.as_deref(), &resp)?;
        }
        Command::Revoke { token_id } => {
            let (status, id, resp) = c
                .answer(
                    reqwest::Method::DELETE,
                    &format!("/v1/tokens/{}", keyward_client::segment(&token_id)),
                    None,
                )
                .await
                .map_err(e)?;
            if !status.is_success() {
                print_raw(out, status, id.as_deref(), &resp)?;
            }
        }
        Command::Login { name, totp } => {
            password_login(c, out, "/v1/auth/login", &name, totp.as_deref()).await?
        }
        Command::Auth(a) => auth(c, out, a).await?,
        Command::Policy(p) => match p {
            PolicyCmd::Put { name, input } => {
                let raw = read_input(&input)?;
                // Checked here first, so a typo is named before anything is sent.
                let doc: keyward_api::PolicyDoc = serde_json::from_slice(&raw)
                    .map_err(|x| format!("not a policy document: {x}"))?;
                out.policy(&c.put_policy(&name, &doc).await.map_err(e)?);
            }
            PolicyCmd::Show { name } => out.policy(&c.get_policy(&name).await.map_err(e)?),
            PolicyCmd::Delete { name } => c.delete_policy(&name).await.map_err(e)?,
            PolicyCmd::List => {
                let all = list_all(c, "/v1/policies", "policies").await?;
                if out.json {
                    out.value(&all);
                } else {
                    for name in all.iter().filter_map(|n| n.as_str()) {
                        println!("{name}");
                    }
                }
            }
        },
        Command::Approval(a) => match a {
            ApprovalCmd::List { status } => {
                out.approvals(&c.list_approvals(status.as_deref()).await.map_err(e)?)
            }
            ApprovalCmd::Show { id } => out.value(&c.get_approval(&id).await.map_err(e)?),
            ApprovalCmd::Approve { id } => out.value(&c.approve(&id).await.map_err(e)?),
            ApprovalCmd::Reject { id } => out.value(&c.reject(&id).await.map_err(e)?),
        },
        Command::Mfa { name } => {
            let enrolled = c.enroll_mfa(&name).await.map_err(e)?;
            if out.json {
                out.value(&enrolled);
            } else {
                println!("{}", enrolled.totp_uri.as_str());
                eprintln!(
                    "Add this URI to {name}'s authenticator app now: it is shown once. Log in with \
                     `keyward login {name} --totp CODE`."
                );
            }
        }
        // Commands of other areas are dispatched elsewhere.
        _ => {}
    }
    Ok(())
}

/// `POST /v1/identities`, borrowed so that the password exists only in zeroizing buffers.
#[derive(serde::Serialize)]
struct NewIdentityBody<'a> {
    name: &'a str,
    kind: &'a str,
    roles: &'a [String],
    policies: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate_subject: Option<&'a str>,
}

/// `POST /v1/auth/login`, borrowed so that the password exists only in zeroizing buffers.
#[derive(serde::Serialize)]
struct LoginBody<'a> {
    name: &'a str,
    password: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    totp: Option<&'a str>,
}

/// JSON of a body holding a secret, written into a buffer of `capacity` bytes (what the escaped fields can
/// take, so it is never reallocated, which would leave an unwiped copy behind) and wiped when dropped.
fn secret_json<T: serde::Serialize>(
    body: &T,
    capacity: usize,
) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(capacity));
    serde_json::to_writer(&mut *buf, body).map_err(|x| x.to_string())?;
    Ok(buf)
}

#[derive(serde::Serialize)]
struct JwtLoginBody<'a> {
    issuer: &'a str,
    jwt: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<&'a str>,
}

/// Sends `body` to `path` and prints the answer (nothing for `204`).
async fn exchange(
    c: &Client,
    out: &Out,
    method: reqwest::Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Res {
    let (status, id, resp) = c.answer(method, path, body).await.map_err(Failure::from)?;
    if status == reqwest::StatusCode::NO_CONTENT {
        return Ok(());
    }
    print_raw(out, status, id.as_deref(), &resp)
}

/// A JSON document read from a file or stdin, checked to be JSON before it is sent.
fn json_input(input: &Option<PathBuf>) -> Result<Vec<u8>, String> {
    let raw = read_input(input)?;
    serde_json::from_slice::<serde_json::Value>(&raw).map_err(|x| format!("not JSON: {x}"))?;
    Ok(raw)
}

async fn auth(c: &Client, out: &Out, a: AuthCmd) -> Res {
    use reqwest::Method;
    let issuer_path =
        |name: &str| format!("/v1/auth/jwt/issuers/{}", keyward_client::segment(name));
    match a {
        AuthCmd::JwtLogin {
            issuer,
            rule,
            input,
        } => {
            let raw = zeroize::Zeroizing::new(read_input(&input)?);
            let jwt = std::str::from_utf8(&raw)
                .map_err(|_| "the JWT is not text".to_string())?
                .trim();
            let body = secret_json(
                &JwtLoginBody {
                    issuer: &issuer,
                    jwt,
                    rule: rule.as_deref(),
                },
                64 + issuer.len() + jwt.len() + rule.as_ref().map_or(0, String::len),
            )?;
            exchange(
                c,
                out,
                Method::POST,
                "/v1/auth/jwt/login",
                Some(body.to_vec()),
            )
            .await
        }
        AuthCmd::LdapLogin { name, totp } => {
            password_login(c, out, "/v1/auth/ldap/login", &name, totp.as_deref()).await
        }
        AuthCmd::IssuerPut { name, input } => {
            let body = json_input(&input)?;
            exchange(c, out, Method::PUT, &issuer_path(&name), Some(body)).await
        }
        AuthCmd::IssuerShow { name } => {
            exchange(c, out, Method::GET, &issuer_path(&name), None).await
        }
        AuthCmd::IssuerList => exchange(c, out, Method::GET, "/v1/auth/jwt/issuers", None).await,
        AuthCmd::IssuerDelete { name } => {
            exchange(c, out, Method::DELETE, &issuer_path(&name), None).await
        }
        AuthCmd::LdapPut { input } => {
            let body = zeroize::Zeroizing::new(json_input(&input)?);
            exchange(
                c,
                out,
                Method::PUT,
                "/v1/auth/ldap/config",
                Some(body.to_vec()),
            )
            .await
        }
        AuthCmd::LdapShow => exchange(c, out, Method::GET, "/v1/auth/ldap/config", None).await,
        AuthCmd::LdapDelete => exchange(c, out, Method::DELETE, "/v1/auth/ldap/config", None).await,
    }
}

/// Signs in with a password read from stdin (asked for without echo at a terminal), and prints the token.
async fn password_login(c: &Client, out: &Out, path: &str, name: &str, totp: Option<&str>) -> Res {
    let pw = if tty::interactive() {
        tty::hidden("Password: ", true, "the password").await?
    } else {
        tty::all_of_stdin("the password")?
    };
    let password = pw.trim_end_matches('\n');
    let body = secret_json(
        &LoginBody {
            name,
            password,
            totp,
        },
        64 + 6 * (name.len() + password.len() + totp.map_or(0, str::len)),
    )?;
    exchange(c, out, reqwest::Method::POST, path, Some(body.to_vec())).await
}
