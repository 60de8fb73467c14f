//! Binding to and searching an LDAP directory or Active Directory to sign a person in.
//!
//! The service account finds the user by the configured filter (the typed name escaped, so it cannot widen
//! the search), the user's own bind proves the password, and the service account reads the groups. A name
//! that matches no entry, or several, still costs a bind, so that the time taken does not tell which names
//! exist.

use std::sync::Arc;

use keyward_iam::ldap::LdapConfig;
use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};

/// What the directory said of a sign-in.
pub enum Outcome {
    /// The password is right: the user's DN and the DNs of its groups.
    Member {
        /// The user's entry.
        dn: String,
        /// Its groups, from `memberOf` and the group search.
        groups: Vec<String>,
    },
    /// No such user, several, or a wrong password: one answer for all three.
    Refused,
}

/// LDAP's `invalidCredentials`.
const INVALID_CREDENTIALS: u32 = 49;

/// Signs `name` in with `password`. `Err` is the directory being unreachable, slow or refusing the service
/// account: a 503 for the caller, with this sentence.
pub async fn sign_in(
    cfg: &LdapConfig,
    bind_password: &str,
    name: &str,
    password: &str,
) -> Result<Outcome, String> {
    let budget = cfg.timeout() * 4;
    match tokio::time::timeout(budget, exchange(cfg, bind_password, name, password)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "the directory did not answer within {} s",
            budget.as_secs()
        )),
    }
}

fn tls_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|_| "ca_pem is not PEM".to_string())?;
        roots
            .add(cert)
            .map_err(|e| format!("ca_pem holds a certificate that cannot be used: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

async fn exchange(
    cfg: &LdapConfig,
    bind_password: &str,
    name: &str,
    password: &str,
) -> Result<Outcome, String> {
    let timeout = cfg.timeout();
    let mut settings = LdapConnSettings::new()
        .set_conn_timeout(timeout)
        .set_starttls(cfg.starttls);
    if let Some(pem) = &cfg.ca_pem {
        settings = settings.set_config(tls_config(pem)?);
    }
    let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &cfg.url)
        .await
        .map_err(|e| format!("cannot reach the directory at {}: {e}", cfg.url))?;
    ldap3::drive!(conn);
    service_bind(&mut ldap, cfg, bind_password).await?;
    let (entries, _) = ldap
        .with_timeout(timeout)
        .search(
            &cfg.user_base,
            Scope::Subtree,
            &cfg.user_search(name),
            vec!["memberOf"],
        )
        .await
        .map_err(|e| failed("search for the user", e))?
        .success()
        .map_err(|e| failed("search for the user", e))?;
    let mut entries: Vec<SearchEntry> = entries.into_iter().map(SearchEntry::construct).collect();
    let found = if entries.len() == 1 {
        entries.pop()
    } else {
        None
    };
    // The user's own bind proves the password; a name with no single entry binds as nobody, at the same cost.
    let dn = match &found {
        Some(e) => e.dn.clone(),
        None => format!("cn=keyward-no-such-user,{}", cfg.user_base),
    };
    let bound = ldap
        .with_timeout(timeout)
        .simple_bind(&dn, password)
        .await
        .map_err(|e| failed("bind the user", e))?;
    let Some(entry) = found else {
        let _ = ldap.unbind().await;
        return Ok(Outcome::Refused);
    };
    if bound.rc == INVALID_CREDENTIALS {
        let _ = ldap.unbind().await;
        return Ok(Outcome::Refused);
    }
    bound.success().map_err(|e| failed("bind the user", e))?;
    let mut groups: Vec<String> = entry
        .attrs
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("memberOf"))
        .flat_map(|(_, v)| v.iter().cloned())
        .collect();
    if let (Some(base), Some(filter)) = (&cfg.group_base, cfg.group_search(name, &entry.dn)) {
        service_bind(&mut ldap, cfg, bind_password).await?;
        let (found, _) = ldap
            .with_timeout(timeout)
            .search(base, Scope::Subtree, &filter, vec!["cn"])
            .await
            .map_err(|e| failed("search for groups", e))?
            .success()
            .map_err(|e| failed("search for groups", e))?;
        groups.extend(found.into_iter().map(|g| SearchEntry::construct(g).dn));
    }
    let _ = ldap.unbind().await;
    groups.sort();
    groups.dedup();
    Ok(Outcome::Member {
        dn: entry.dn,
        groups,
    })
}

fn failed(what: &str, e: ldap3::LdapError) -> String {
    format!("the directory failed to {what}: {e}")
}

/// Binds as the service account that searches (nothing to do for an anonymous search).
async fn service_bind(
    ldap: &mut ldap3::Ldap,
    cfg: &LdapConfig,
    bind_password: &str,
) -> Result<(), String> {
    if cfg.bind_dn.is_empty() {
        return Ok(());
    }
    ldap.with_timeout(cfg.timeout())
        .simple_bind(&cfg.bind_dn, bind_password)
        .await
        .map_err(|e| failed("bind the service account", e))?
        .success()
        .map(|_| ())
        .map_err(|e| {
            format!(
                "the directory refused the service account ({}): {e}",
                cfg.bind_dn
            )
        })
}
