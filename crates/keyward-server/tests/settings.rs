//! One configuration definition: README's settings table names exactly the settings the server has, its
//! example file is accepted as written, and every setting is read from the environment and from `--set`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keyward_server::config::setting_names;
use keyward_server::{Config, Overrides};

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap()
}

#[test]
fn the_readme_table_names_every_setting_and_no_other() {
    let text = readme();
    let start = text.find("| setting | default | what |").unwrap();
    let mut table: Vec<&str> = text[start..]
        .lines()
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once("` |"))
        .map(|(name, _)| name)
        .filter(|name| {
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
        })
        .collect();
    table.sort_unstable();
    let mut names = setting_names().to_vec();
    names.sort_unstable();
    assert_eq!(table, names);
}

#[test]
fn the_readme_example_file_is_accepted_as_written() {
    let text = readme();
    let start = text.find("```toml\n").unwrap() + "```toml\n".len();
    let example = &text[start..start + text[start..].find("```").unwrap()];
    let dir = std::env::temp_dir().join(format!("keyward-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("keyward.toml");
    std::fs::write(&file, example).unwrap();
    let c = Config::load_from(Some(&file), |_| None, &[], Overrides::default());
    let _ = std::fs::remove_dir_all(&dir);
    let c = c.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.approval_retention_days, 90);
}

#[test]
fn every_setting_is_read_from_the_environment_and_from_set_flags() {
    let env = |name: &str| match name {
        "KEYWARD_RATE_LIMIT_PER_SECOND" => Some("0".to_string()),
        "KEYWARD_PROXY_PROTOCOL_FROM" => Some(r#"["10.0.0.0/8"]"#.to_string()),
        "KEYWARD_DATA_DIR" => Some("/var/lib/keyward".to_string()),
        "KEYWARD_LOG_FORMAT" => Some("json".to_string()),
        "KEYWARD_KEY_CACHE_CAPACITY" => Some("64".to_string()),
        // Strings that read as numbers stay strings.
        "KEYWARD_PKCS11_PIN" => Some("1234".to_string()),
        "KEYWARD_NODE_ID" => Some("7".to_string()),
        _ => None,
    };
    let c = Config::load_from(
        None,
        env,
        &[
            "key_cache_capacity=99".to_string(),
            "audit_retention_days = 400".to_string(),
        ],
        Overrides::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.rate_limit_per_second, 0);
    assert_eq!(c.proxy_protocol_from, vec!["10.0.0.0/8".to_string()]);
    assert_eq!(c.data_dir, std::path::PathBuf::from("/var/lib/keyward"));
    assert_eq!(c.log_format, keyward_server::log::LogFormat::Json);
    assert_eq!(c.key_cache_capacity, 99, "a flag wins over the environment");
    assert_eq!(c.audit_retention_days, 400);
    assert_eq!(c.pkcs11_pin.as_deref().map(|p| p.as_str()), Some("1234"));
    assert_eq!(c.node_id.as_deref(), Some("7"));
    for bad in ["nope=1", "no-equals-sign", "rate_limit_per_second=fast"] {
        assert!(
            Config::load_from(None, |_| None, &[bad.to_string()], Overrides::default()).is_err(),
            "{bad}"
        );
    }
    // Every name is one the file accepts.
    assert!(setting_names().len() >= 28, "{:?}", setting_names());
}
