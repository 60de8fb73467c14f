//! `keyward`: the server, the operator tools, and a client for every endpoint.
//!
//! Reads `KEYWARD_ADDR` (several comma-separated for failover) and `KEYWARD_TOKEN`. Output is a human table
//! by default and JSON with `--json`. Secrets (plaintexts, data keys, shares, tokens) are only ever written
//! to stdout or the file asked for, never to stderr.

mod bench;
mod commands;
mod files;
mod output;
mod tty;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use base64::Engine as _;
use clap::{Args, Parser, Subcommand};
use files::{Access, Staged};
use keyward_api::*;
use keyward_client::{envelope, Client};
use output::Out;

/// mimalloc instead of the system allocator: requests allocate on a runtime worker and the audit writer frees
/// on its own thread, and glibc's arenas then spend a measurable share of every request in their locks and
/// consolidation (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "keyward",
    version,
    about = "Keyward key management service",
    after_help = "Environment of the client commands:\n  \
        KEYWARD_ADDR         the server (default http://127.0.0.1:9700; several, comma-separated, fail over)\n  \
        KEYWARD_TOKEN        the bearer token (keyward login NAME prints one)\n  \
        KEYWARD_CACERT       PEM CA bundle to trust instead of the system roots\n  \
        KEYWARD_CLIENT_CERT  PEM client certificate for mutual TLS, with KEYWARD_CLIENT_KEY (its key)"
)]
struct Cli {
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    ///
    /// SIGHUP reloads the TLS certificate, key and client CAs from their files (audited; a failed reload
    /// keeps the certificate in use). SIGTERM or SIGINT stops it gracefully: new connections are refused,
    /// requests in flight finish, and the node seals before it exits.
    Serve(ServeArgs),
    /// Initialise, unseal, seal and inspect the service.
    #[command(subcommand)]
    Operator(Operator),
    /// Manage keys.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Manage aliases.
    #[command(subcommand)]
    Alias(AliasCmd),
    /// Store, show, list or delete policy documents.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Create, list, show, change or delete identities.
    #[command(subcommand)]
    Identity(IdentityCmd),
    /// Sign in through the enterprise's identity provider (a JWT issuer, an LDAP directory), and configure
    /// which providers are trusted.
    #[command(subcommand)]
    Auth(AuthCmd),
    /// Access keys of an identity, for clients of the AWS KMS protocol (AWS SDKs, the AWS CLI).
    #[command(subcommand)]
    AccessKey(AccessKeyCmd),
    /// List, approve or reject operations waiting for quorum approval.
    #[command(subcommand)]
    Approval(ApprovalCmd),
    /// Encrypt stdin, a file (`--in`), or a large file with envelope encryption (`--file`).
    Encrypt(EncryptArgs),
    /// Decrypt stdin, a file (`--in`), or an envelope-encrypted file (`--file`).
    Decrypt(DecryptArgs),
    /// Generate a data key.
    DataKey {
        /// Key id or alias.
        key: String,
        /// AES_256 or AES_128.
        #[arg(long, default_value = "AES_256")]
        spec: String,
        /// Encryption context, k=v (repeatable).
        #[arg(long = "context", value_parser = kv)]
        context: Vec<(String, String)>,
    },
    /// Sign stdin or a file.
    Sign(SignArgs),
    /// Verify a signature over stdin or a file.
    Verify(VerifyArgs),
    /// Compute a MAC over stdin or a file.
    Mac {
        /// Key id or alias.
        key: String,
        /// HMAC_SHA_224, HMAC_SHA_256, HMAC_SHA_384 or HMAC_SHA_512 (default: the one of the key's spec)
        #[arg(long)]
        algorithm: Option<String>,
        /// Input file (default stdin).
        #[arg(long = "in")]
        input: Option<PathBuf>,
    },
    /// Re-encrypt a base64 ciphertext (stdin or --in) under another key.
    Reencrypt {
        /// Destination key id or alias.
        key: String,
        /// Context of the source ciphertext, k=v (repeatable).
        #[arg(long = "context", value_parser = kv)]
        context: Vec<(String, String)>,
        /// New context, k=v (repeatable); the old one is kept when absent.
        #[arg(long = "new-context", value_parser = kv)]
        new_context: Vec<(String, String)>,
        /// Input file (default stdin).
        #[arg(long = "in")]
        input: Option<PathBuf>,
    },
    /// Generate a data key pair (private key returned encrypted, and in plaintext).
    DataKeyPair {
        /// Key id or alias of the symmetric KMS key.
        key: String,
        /// RSA_2048, RSA_3072, RSA_4096, ECC_NIST_P256, ECC_NIST_P384, ECC_NIST_P521, ECC_SECG_P256K1 or SM2.
        #[arg(long)]
        spec: String,
    },
    /// Verify a MAC (base64) over stdin or a file.
    VerifyMac {
        /// Key id or alias.
        key: String,
        /// HMAC_SHA_224, HMAC_SHA_256, HMAC_SHA_384 or HMAC_SHA_512 (default: the one of the key's spec)
        #[arg(long)]
        algorithm: Option<String>,
        /// Base64 MAC.
        #[arg(long)]
        mac: String,
        /// Input file (default stdin).
        #[arg(long = "in")]
        input: Option<PathBuf>,
    },
    /// Derive a key (HKDF-SHA-256) from a symmetric key with a context.
    Derive {
        /// Key id or alias.
        key: String,
        /// Derivation context (text).
        #[arg(long)]
        context: String,
        /// Length in bytes (16 to 64).
        #[arg(long, default_value_t = 32)]
        length: usize,
    },
    /// Protect columns of personal data in a CSV (with a header) or JSON-lines file: each named column is
    /// replaced by its ciphertext, and `<col>_masked` and `<col>_bidx` are added beside it. Values go through
    /// the API in batches of 1000; the output appears only if every row succeeded.
    Protect(FieldFileArgs),
    /// Reverse `protect`: each named column's ciphertext is replaced by its value, and its `_masked` and
    /// `_bidx` columns are dropped. The output is readable by its owner only.
    Unprotect(FieldFileArgs),
    /// ECDH with a peer public key (SPKI DER file).
    Agree {
        /// Key id or alias.
        key: String,
        /// The peer's public key (DER).
        #[arg(long)]
        peer: PathBuf,
    },
    /// ML-KEM decapsulation of a ciphertext (file) made against the key's public key; prints the shared
    /// secret (base64).
    Decapsulate {
        /// Key id or alias.
        key: String,
        /// The ciphertext (raw bytes).
        #[arg(long = "in")]
        input: PathBuf,
        /// The version whose public key the sender used (default: the primary).
        #[arg(long)]
        version: Option<u32>,
        /// Instead of the secret, print a data key derived from it, encrypted under this symmetric key
        /// (JSON, as `data-key` prints it, without the plaintext).
        #[arg(long)]
        wrapping_key: Option<String>,
        /// With --wrapping-key: encryption context of the encrypted data key, k=v (repeatable).
        #[arg(long = "context", value_parser = kv, requires = "wrapping_key")]
        context: Vec<(String, String)>,
    },
    /// Create a CSR signed by a key.
    Csr {
        /// Key id or alias.
        key: String,
        /// Subject, e.g. "CN=api.example.com, O=Example\, Inc., C=DE": pairs in certificate order, values
        /// escaped as RFC 4514 says.
        #[arg(long)]
        subject: String,
        /// Subject alternative name (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
    },
    /// Issue a certificate: self-signed, or for a CSR (--csr FILE) with this key as the CA.
    Certificate {
        /// Key id or alias.
        key: String,
        /// Subject (of a self-signed certificate, or the issuer name), written as for `csr`.
        #[arg(long)]
        subject: Option<String>,
        /// A PEM CSR to issue a certificate for.
        #[arg(long)]
        csr: Option<PathBuf>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Mark the certificate as a CA.
        #[arg(long)]
        ca: bool,
    },
    /// Read or verify the audit log.
    Audit {
        /// Verify the hash chain instead of listing.
        #[arg(long)]
        verify: bool,
        /// Only this principal.
        #[arg(long)]
        principal: Option<String>,
        /// Only records concerning this key (its id, or an alias, which the service looks up now): its own
        /// requests and the re-encryptions that read its ciphertexts.
        #[arg(long)]
        key: Option<String>,
        /// Only records concerning this identity, policy, token or approval (identity/NAME, policy/NAME,
        /// token/ID, approval/ID).
        #[arg(long)]
        resource: Option<String>,
        /// Only the records of one request: the `x-request-id` of its response (the CLI prints it with
        /// every refusal).
        #[arg(long)]
        request_id: Option<String>,
        /// Only this action (kms:Encrypt, ...).
        #[arg(long)]
        action: Option<String>,
        /// Only this outcome: allow, deny or error.
        #[arg(long)]
        outcome: Option<String>,
        /// Only records at or after this RFC 3339 UTC time.
        #[arg(long)]
        since: Option<String>,
        /// Only records before this RFC 3339 UTC time.
        #[arg(long)]
        until: Option<String>,
        /// Records per page (1 to 1000).
        #[arg(long)]
        limit: Option<u32>,
        /// Every matching record, page after page (with --json: one record per line, for export).
        #[arg(long)]
        all: bool,
        /// The page after the one that printed this token.
        #[arg(long, conflicts_with = "all")]
        next_token: Option<String>,
        /// Keep printing matching records as they are written, one line each, from now (by this machine's
        /// clock) or from --since, until interrupted.
        #[arg(long, conflicts_with_all = ["all", "next_token", "until", "verify"])]
        follow: bool,
        /// Delete the records up to and including this sequence number (retention; admin only). They
        /// must all be older than the service's audit_retention_days and verify, and the newest record
        /// always stays.
        #[arg(long, value_name = "SEQ", conflicts_with_all = ["all", "next_token", "follow", "verify"])]
        prune_through: Option<u64>,
        /// With --prune-through: first write the records to be deleted to this new file, as JSON lines,
        /// flushed to disk before anything is deleted.
        #[arg(long, value_name = "FILE", requires = "prune_through")]
        archive: Option<PathBuf>,
        /// Check an archive (JSON lines, as --archive or --all --json wrote them) against this deployment's
        /// audit key: every record authentic and in order, and whether the kept log continues from its
        /// last record.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["all", "next_token", "follow", "verify", "prune_through"])]
        verify_archive: Option<PathBuf>,
        /// With --verify-archive: the hash of the record before the archive's first (the previous archive's
        /// last), when the archive does not start the log.
        #[arg(long, value_name = "HASH", requires = "verify_archive")]
        prev_hash: Option<String>,
        /// Further filters as a query string, e.g. "principal=app&outcome=deny".
        #[arg(long, default_value = "")]
        filter: String,
    },
    /// Prometheus metrics.
    Metrics,
    /// The compliance report: a summary table by default, the whole report with --json, or HTML (--html).
    Report {
        /// The whole report as HTML.
        #[arg(long)]
        html: bool,
        /// Keys unused for this many days are reported dormant.
        #[arg(long, default_value_t = 90)]
        dormant_days: u32,
        /// Write to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Export a signed checkpoint of the audit chain head (keep it outside Keyward).
    Checkpoint,
    /// Enrol TOTP MFA for a user identity: prints the otpauth:// URI (it holds the seed) once.
    Mfa {
        /// Identity name.
        name: String,
    },
    /// Create a token for an identity (printed once).
    Token {
        /// Identity name.
        name: String,
        /// Lifetime in seconds.
        #[arg(long)]
        ttl: Option<i64>,
    },
    /// Revoke a token by its id.
    Revoke {
        /// Token id (tok_...).
        token_id: String,
    },
    /// Log in with a password read from stdin (asked for without echo at a terminal); prints a token.
    Login {
        /// Identity name.
        name: String,
        /// The current code of the identity's authenticator (identities enrolled with `keyward mfa`).
        #[arg(long)]
        totp: Option<String>,
    },
    /// Who KEYWARD_TOKEN (or the client certificate) authenticates as: name, roles, policies, token id,
    /// expiry and whether it was issued after MFA.
    Whoami,
    /// Whether the node serves: ok, sealed or uninitialized (exit status 1 unless ok).
    Health,
    /// Random bytes from the HSM, base64.
    Random {
        /// 1 to 1024.
        length: usize,
    },
    /// Drive load against a server and print req/s and latency percentiles.
    Bench(bench::BenchArgs),
    /// A minimal HTTP server answering 200: the machine's HTTP floor for `bench`.
    BenchFloor {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:9799")]
        listen: SocketAddr,
        /// Make a 300-byte record durable in this new file (group commit) before each answer: the least a
        /// durably audited request costs on this machine.
        #[arg(long)]
        durable: Option<PathBuf>,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Development mode: embedded store, initialised and unsealed, root token printed.
    #[arg(long)]
    dev: bool,
    /// Listen address (default 127.0.0.1:9700, or `listen` in the configuration file).
    #[arg(long, env = "KEYWARD_LISTEN")]
    listen: Option<SocketAddr>,
    /// Also serve the Vault API (KV version 2, health, token lookup) on this address (`vault_listen`).
    #[arg(long, env = "KEYWARD_VAULT_LISTEN")]
    vault_listen: Option<SocketAddr>,
    /// Data directory: the node's own files and the default SQLite store (default ./keyward-data, relative
    /// to the directory the server starts in; the server names it at start).
    #[arg(long, env = "KEYWARD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Store URL: sqlite://PATH (default: keyward.db in the data directory) or postgres://USER@HOST/DB.
    #[arg(long, env = "KEYWARD_STORE")]
    store: Option<String>,
    /// TOML configuration file.
    #[arg(long, env = "KEYWARD_CONFIG")]
    config: Option<PathBuf>,
    /// PEM certificate chain.
    #[arg(long, env = "KEYWARD_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long, env = "KEYWARD_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// PEM CA bundle for client certificates.
    #[arg(long, env = "KEYWARD_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// Allow plain HTTP on a non-loopback address.
    #[arg(long)]
    insecure_http: bool,
    /// PKCS#11 module: the token becomes the root of trust and the service unseals itself.
    #[arg(long, env = "KEYWARD_PKCS11_MODULE")]
    pkcs11_module: Option<PathBuf>,
    /// Label of the PKCS#11 token.
    #[arg(long, env = "KEYWARD_PKCS11_TOKEN_LABEL")]
    pkcs11_token_label: Option<String>,
    /// File holding the token's user PIN (or set KEYWARD_PKCS11_PIN).
    #[arg(long, env = "KEYWARD_PKCS11_PIN_FILE")]
    pkcs11_pin_file: Option<PathBuf>,
    /// Any setting of the configuration file, given here (repeatable; wins over the file and the
    /// environment, where every setting is also read as KEYWARD_<SETTING>).
    #[arg(long = "set", value_name = "SETTING=VALUE")]
    set: Vec<String>,
    /// Log format: human (default) or json, one object per line for log shippers.
    #[arg(long, env = "KEYWARD_LOG_FORMAT", value_parser = keyward_server::log::LogFormat::parse)]
    log_format: Option<keyward_server::log::LogFormat>,
}

#[derive(Subcommand)]
enum Operator {
    /// Initialise: prints the unseal shares and the root token, once.
    Init {
        /// Number of shares.
        #[arg(long, default_value_t = 5)]
        shares: u8,
        /// Shares needed to unseal.
        #[arg(long, default_value_t = 3)]
        threshold: u8,
    },
    /// Give one unseal share (read from stdin when not given; asked for without echo at a terminal).
    Unseal {
        /// A share (visible to other users of the machine in its process list: prefer stdin).
        share: Option<String>,
    },
    /// Seal: drop every key from memory.
    Seal,
    /// Seal status.
    Status,
    /// Generate a new root key and re-wrap every key version.
    RotateRoot,
    /// Mint a new root token from a threshold of unseal shares (read from stdin, one per line; asked for without echo at a terminal).
    GenerateRoot,
    /// Write an encrypted, authenticated snapshot of the whole service to a file.
    Backup {
        /// Where to write it; written to a temporary file, flushed, then renamed into place.
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Restore a backup: into a fresh node (with unseal shares), or into a running cluster.
    Restore {
        /// The backup file.
        #[arg(long, short)]
        input: PathBuf,
        /// File of unseal shares, one per line: needed on a fresh, uninitialised node.
        #[arg(long)]
        shares_file: Option<PathBuf>,
        /// Let older state in the backup replace newer state in the store.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Create a key.
    Create(CreateArgs),
    /// List keys.
    List {
        /// Only this state.
        #[arg(long)]
        state: Option<String>,
        /// Only this spec.
        #[arg(long)]
        spec: Option<String>,
        /// Only keys with this tag, k=v (as `key create --tag` sets it).
        #[arg(long, value_parser = kv)]
        tag: Option<(String, String)>,
        /// Print at most this many keys.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show one key.
    Show {
        /// Key id or alias.
        key: String,
    },
    /// Change description, tags, rotation or min_decryption_version.
    Update {
        /// Key id or alias.
        key: String,
        /// New description.
        #[arg(long)]
        description: Option<String>,
        /// Tags replacing the current ones, k=v (repeatable).
        #[arg(long = "tag", value_parser = kv)]
        tags: Vec<(String, String)>,
        /// Rotation period in days.
        #[arg(long)]
        rotation_days: Option<u32>,
        /// Turn automatic rotation off.
        #[arg(long)]
        no_rotation: bool,
        /// Lowest version that may decrypt.
        #[arg(long)]
        min_decryption_version: Option<u32>,
    },
    /// Enable a key.
    Enable {
        /// Key id or alias.
        key: String,
    },
    /// Disable a key.
    Disable {
        /// Key id or alias.
        key: String,
    },
    /// Rotate: new primary version.
    Rotate {
        /// Key id or alias.
        key: String,
    },
    /// List versions.
    Versions {
        /// Key id or alias.
        key: String,
    },
    /// enable | disable | archive | restore | destroy one version.
    Version {
        /// Key id or alias.
        key: String,
        /// Version number.
        version: u32,
        /// The action.
        action: String,
    },
    /// Make a version primary (roll back or forward).
    Primary {
        /// Key id or alias.
        key: String,
        /// Version number.
        version: u32,
    },
    /// Schedule deletion after a waiting period.
    ScheduleDeletion {
        /// Key id or alias.
        key: String,
        /// 7 to 30.
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
    /// Cancel a scheduled deletion (the key comes back disabled).
    CancelDeletion {
        /// Key id or alias.
        key: String,
    },
    /// Print the public key (PEM).
    PublicKey {
        /// Key id or alias.
        key: String,
    },
    /// Import key material (raw bytes, or PKCS#8 DER) into an EXTERNAL key, wrapped locally for transport.
    Import {
        /// Key id or alias.
        key: String,
        /// File with the material.
        #[arg(long)]
        material: PathBuf,
    },
    /// Delete the imported material of an EXTERNAL key: it refuses all use until the same material is
    /// imported again (held for approval where the key needs a quorum).
    DeleteImportedMaterial {
        /// Key id or alias.
        key: String,
    },
    /// Export an exportable key wrapped for the holder of an RSA public key (SPKI DER file).
    Export {
        /// Key id or alias.
        key: String,
        /// The recipient's RSA public key (DER).
        #[arg(long)]
        wrapping_key: PathBuf,
        /// Version (the primary by default).
        #[arg(long)]
        version: Option<u32>,
    },
}

#[derive(Args)]
struct CreateArgs {
    /// Key spec: SYMMETRIC_DEFAULT, AES_128, AES_256, SM4, TDES (legacy: with --allow-legacy), RSA_2048, RSA_3072, RSA_4096, ECC_NIST_P256, ECC_NIST_P384, ECC_NIST_P521, ECC_SECG_P256K1, ED25519, SM2, HMAC_224, HMAC_256, HMAC_384, HMAC_512, ML_DSA_44, ML_DSA_65, ML_DSA_87, ML_KEM_768, ML_KEM_1024.
    #[arg(long, default_value = "SYMMETRIC_DEFAULT")]
    spec: String,
    /// Usage: ENCRYPT_DECRYPT, SIGN_VERIFY, GENERATE_VERIFY_MAC or KEY_AGREEMENT (default: the spec's usual
    /// one).
    #[arg(long)]
    usage: Option<String>,
    /// Description.
    #[arg(long)]
    description: Option<String>,
    /// alias/NAME.
    #[arg(long)]
    alias: Option<String>,
    /// Tag, k=v (repeatable).
    #[arg(long = "tag", value_parser = kv)]
    tags: Vec<(String, String)>,
    /// Automatic rotation period in days.
    #[arg(long)]
    rotation_days: Option<u32>,
    /// Allow wrapped export.
    #[arg(long)]
    exportable: bool,
    /// KEYWARD, EXTERNAL or HSM.
    #[arg(long)]
    origin: Option<String>,
    /// Approvals needed for destructive operations.
    #[arg(long)]
    quorum: Option<u32>,
    /// Allow legacy specs (TDES).
    #[arg(long)]
    allow_legacy: bool,
    /// Blind index length of field protection, 16 to 256 bits (default 64; fixed for the key's life).
    #[arg(long)]
    blind_index_bits: Option<u32>,
}

#[derive(Subcommand)]
enum AliasCmd {
    /// Point an alias at a key.
    Set {
        /// alias/NAME.
        name: String,
        /// Key id.
        key: String,
    },
    /// Delete an alias.
    Delete {
        /// alias/NAME.
        name: String,
    },
    /// List aliases.
    List,
}

#[derive(Subcommand)]
enum AuthCmd {
    /// Exchange a JWT from a trusted issuer (read from --in, or stdin) for a Keyward token.
    JwtLogin {
        /// The issuer's name in Keyward.
        issuer: String,
        /// The issuer's rule to sign in under (default: the first whose bound claims hold).
        #[arg(long)]
        rule: Option<String>,
        /// A file holding the JWT.
        #[arg(long = "in")]
        input: Option<PathBuf>,
    },
    /// Sign in with a directory account; the password is read from stdin (asked for without echo at a
    /// terminal).
    LdapLogin {
        /// The account's name in the directory.
        name: String,
        /// The current code of the identity's authenticator, when enrolled.
        #[arg(long)]
        totp: Option<String>,
    },
    /// Create or replace a trusted JWT issuer from a JSON document (a file, or stdin).
    IssuerPut {
        /// The issuer's name in Keyward.
        name: String,
        /// {"issuer", "jwks_url"?, "jwks"?, "audiences", "algorithms"?, "rules": [...]}.
        #[arg(long = "in")]
        input: Option<PathBuf>,
    },
    /// Show a trusted JWT issuer.
    IssuerShow {
        /// The issuer's name in Keyward.
        name: String,
    },
    /// List the trusted JWT issuers.
    IssuerList,
    /// Stop trusting a JWT issuer.
    IssuerDelete {
        /// The issuer's name in Keyward.
        name: String,
    },
    /// Set the LDAP directory from a JSON document (a file, or stdin); the server seals its bind_password.
    LdapPut {
        /// {"url", "bind_dn", "bind_password", "user_base", "user_filter", "group_base"?, ...}.
        #[arg(long = "in")]
        input: Option<PathBuf>,
    },
    /// Show the LDAP directory configuration (never its bind password).
    LdapShow,
    /// Stop LDAP sign-in.
    LdapDelete,
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Create or replace a policy from a JSON document (a file, or stdin).
    Put {
        /// Policy name.
        name: String,
        /// The document: {"statements": [{"effect", "actions", "resources", "conditions"?}]}.
        #[arg(long = "in")]
        input: Option<PathBuf>,
    },
    /// Show a policy.
    Show {
        /// Policy name.
        name: String,
    },
    /// Delete a policy.
    Delete {
        /// Policy name.
        name: String,
    },
    /// List the names of stored policies.
    List,
}

#[derive(Subcommand)]
enum IdentityCmd {
    /// Create an identity.
    Create {
        /// Name.
        name: String,
        /// service or user.
        #[arg(long, default_value = "service")]
        kind: String,
        /// Role (repeatable): admin, key-admin, key-user, auditor.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Policy (repeatable): a name given to `keyward policy put`.
        #[arg(long = "policy")]
        policies: Vec<String>,
        /// Read a password from stdin (user identities; at a terminal, asked for twice without echo).
        #[arg(long)]
        password_stdin: bool,
        /// The subject of a client certificate that authenticates as this identity over mutual TLS
        /// (`"CN=app1, O=Payments"`; the server needs `tls_client_ca`).
        #[arg(long)]
        certificate_subject: Option<String>,
    },
    /// List identities (no secrets: whether a password or MFA is set).
    List,
    /// Show one identity.
    Show {
        /// Name.
        name: String,
    },
    /// Replace an identity's roles or policies; its tokens change with it at once.
    Update {
        /// Name.
        name: String,
        /// Role (repeatable): replaces the roles.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Remove every role.
        #[arg(long, conflicts_with = "roles")]
        no_roles: bool,
        /// Policy (repeatable): replaces the policies.
        #[arg(long = "policy")]
        policies: Vec<String>,
        /// Remove every policy.
        #[arg(long, conflicts_with = "policies")]
        no_policies: bool,
    },
    /// Delete an identity, revoking every token it holds.
    Delete {
        /// Name.
        name: String,
    },
    /// List an identity's live tokens by id (`root` for the root tokens); revoke one with `keyward revoke`.
    Tokens {
        /// Name.
        name: String,
    },
}

#[derive(Subcommand)]
enum AccessKeyCmd {
    /// Create an access key: prints its id and secret (the secret only this once). Configure an AWS SDK
    /// with them (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and this server as its endpoint.
    Create {
        /// The identity it acts as, with that identity's roles and policies.
        identity: String,
    },
    /// List an identity's access keys: ids, creation and last use, never secrets.
    List {
        /// Identity name.
        identity: String,
    },
    /// Delete an access key: requests it signs are refused from then on.
    Delete {
        /// Identity name.
        identity: String,
        /// The key's id (AKKW...).
        access_key_id: String,
    },
}

#[derive(Subcommand)]
enum ApprovalCmd {
    /// List approval requests, oldest first.
    List {
        /// Only those in this status: pending, executing, executed, rejected, expired or failed.
        #[arg(long)]
        status: Option<String>,
    },
    /// Show one request: its operation, who asked, who decided, and once run, its result.
    Show {
        /// Approval id (apr_...).
        id: String,
    },
    /// Approve a request; the approval that completes the quorum runs the operation.
    Approve {
        /// Approval id (apr_...).
        id: String,
    },
    /// Reject a request: it will never run.
    Reject {
        /// Approval id (apr_...).
        id: String,
    },
}

#[derive(Args)]
struct EncryptArgs {
    /// Key id or alias.
    key: String,
    /// Encryption context, k=v (repeatable).
    #[arg(long = "context", value_parser = kv)]
    context: Vec<(String, String)>,
    /// Input file (default stdin; at most 64 KiB).
    #[arg(long = "in")]
    input: Option<PathBuf>,
    /// Large file to encrypt with a data key, streaming.
    #[arg(long, conflicts_with = "input")]
    file: Option<PathBuf>,
    /// Output file (default stdout; with --file: FILE.kws).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Segment size for --file.
    #[arg(long, default_value_t = envelope::DEFAULT_SEGMENT)]
    segment: u32,
    /// Algorithm: SYMMETRIC_DEFAULT for symmetric keys; RSAES_OAEP_SHA_256 (the default for RSA keys) or
    /// RSAES_OAEP_SHA_1 for RSA keys; SM2PKE for SM2 keys.
    #[arg(long)]
    algorithm: Option<String>,
}

#[derive(Args)]
struct DecryptArgs {
    /// Key id or alias (required for asymmetric keys).
    #[arg(long)]
    key: Option<String>,
    /// Encryption context, k=v (repeatable).
    #[arg(long = "context", value_parser = kv)]
    context: Vec<(String, String)>,
    /// Input file with base64 ciphertext (default stdin).
    #[arg(long = "in")]
    input: Option<PathBuf>,
    /// Envelope-encrypted file.
    #[arg(long, conflicts_with = "input")]
    file: Option<PathBuf>,
    /// Output file (default stdout).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Algorithm: SYMMETRIC_DEFAULT for symmetric keys; RSAES_OAEP_SHA_256 (the default for RSA keys) or
    /// RSAES_OAEP_SHA_1 for RSA keys; SM2PKE for SM2 keys.
    #[arg(long)]
    algorithm: Option<String>,
}

#[derive(Args)]
struct FieldFileArgs {
    /// Key id or alias.
    key: String,
    /// The columns and their types: NAME:TYPE,... with TYPE one of phone, id_card_cn, bank_card, email, name,
    /// address, text, digits, alnum.
    #[arg(long)]
    columns: String,
    /// Input file (default stdin).
    #[arg(long = "in")]
    input: Option<PathBuf>,
    /// Output file, written whole or not at all.
    #[arg(long)]
    out: PathBuf,
    /// csv (with a header row) or jsonl.
    #[arg(long, default_value = "csv", value_parser = ["csv", "jsonl"])]
    format: String,
    /// encrypt (a fresh nonce per value), deterministic (equal values, equal ciphertexts) or fpe (FF1: a value
    /// of the same type and length, with a <col>_kv column for the key version; unprotect needs it too).
    #[arg(long, value_parser = ["encrypt", "deterministic", "fpe"])]
    mode: Option<String>,
    /// Encryption context of every value, k=v (repeatable).
    #[arg(long = "context", value_parser = kv)]
    context: Vec<(String, String)>,
}

#[derive(Args)]
struct SignArgs {
    /// Key id or alias.
    key: String,
    /// Signing algorithm: RSASSA_PSS_SHA_256|384|512, RSASSA_PKCS1_V1_5_SHA_256|384|512, ECDSA_SHA_256|384|512,
    /// ED25519, SM2DSA or ML_DSA_SHAKE_256 (default: the key spec's usual one: RSASSA_PSS_SHA_256 for RSA,
    /// ECDSA with the curve's hash, ED25519, SM2DSA, ML_DSA_SHAKE_256).
    #[arg(long)]
    algorithm: Option<String>,
    /// Input file (default stdin).
    #[arg(long = "in")]
    input: Option<PathBuf>,
    /// The input is already a digest.
    #[arg(long)]
    digest: bool,
    /// The input is an ML-DSA message's 64-byte external μ (FIPS 204), for ML_DSA_SHAKE_256.
    #[arg(long, conflicts_with = "digest")]
    external_mu: bool,
}

#[derive(Args)]
struct VerifyArgs {
    /// Key id or alias.
    key: String,
    /// Signing algorithm: RSASSA_PSS_SHA_256|384|512, RSASSA_PKCS1_V1_5_SHA_256|384|512, ECDSA_SHA_256|384|512,
    /// ED25519, SM2DSA or ML_DSA_SHAKE_256 (default: the key spec's usual one: RSASSA_PSS_SHA_256 for RSA,
    /// ECDSA with the curve's hash, ED25519, SM2DSA, ML_DSA_SHAKE_256).
    #[arg(long)]
    algorithm: Option<String>,
    /// Base64 signature.
    #[arg(long)]
    signature: String,
    /// Input file (default stdin).
    #[arg(long = "in")]
    input: Option<PathBuf>,
    /// The input is already a digest.
    #[arg(long)]
    digest: bool,
    /// The input is an ML-DSA message's 64-byte external μ (FIPS 204), for ML_DSA_SHAKE_256.
    #[arg(long, conflicts_with = "digest")]
    external_mu: bool,
}

fn kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected k=v, got '{s}'"))
}

fn context(pairs: Vec<(String, String)>) -> Option<Context> {
    (!pairs.is_empty()).then(|| pairs.into_iter().collect())
}

/// What an algorithm is chosen for when none is given.
#[derive(Clone, Copy)]
enum Purpose {
    Sign,
    Mac,
}

/// The algorithm given, or the usual one for the key's spec (the API always needs one; people rarely want
/// anything but the obvious choice). Costs a key lookup only when none is given.
async fn algorithm_for(
    c: &Client,
    key: &str,
    given: Option<String>,
    purpose: Purpose,
) -> Result<String, String> {
    if let Some(a) = given {
        return Ok(a);
    }
    let spec = c.describe_key(key).await.map_err(|e| e.to_string())?.spec;
    let usual = match (purpose, spec.as_str()) {
        (Purpose::Sign, "RSA_2048" | "RSA_3072" | "RSA_4096") => "RSASSA_PSS_SHA_256",
        (Purpose::Sign, "ECC_NIST_P256" | "ECC_SECG_P256K1") => "ECDSA_SHA_256",
        (Purpose::Sign, "ECC_NIST_P384") => "ECDSA_SHA_384",
        (Purpose::Sign, "ECC_NIST_P521") => "ECDSA_SHA_512",
        (Purpose::Sign, "ED25519") => "ED25519",
        (Purpose::Sign, "SM2") => "SM2DSA",
        (Purpose::Sign, "ML_DSA_44" | "ML_DSA_65" | "ML_DSA_87") => "ML_DSA_SHAKE_256",
        (Purpose::Mac, "HMAC_224") => "HMAC_SHA_224",
        (Purpose::Mac, "HMAC_256") => "HMAC_SHA_256",
        (Purpose::Mac, "HMAC_384") => "HMAC_SHA_384",
        (Purpose::Mac, "HMAC_512") => "HMAC_SHA_512",
        _ => {
            let what = match purpose {
                Purpose::Sign => "signing",
                Purpose::Mac => "MAC",
            };
            return Err(format!(
                "key {key} (spec {spec}) has no {what} algorithm; give --algorithm to ask the service anyway"
            ));
        }
    };
    Ok(usual.to_string())
}

fn read_input(path: &Option<PathBuf>) -> Result<Vec<u8>, String> {
    match path {
        Some(p) => std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display())),
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| format!("cannot read stdin: {e}"))?;
            Ok(buf)
        }
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn unb64(s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|_| "input is not base64".to_string())
}

/// Writes a command's output to stdout, or to the file asked for as a whole ([`files`]); `access` says whether
/// it is for the owner's eyes only.
fn write_output(path: &Option<PathBuf>, data: &[u8], access: Access) -> Result<(), String> {
    match path {
        Some(p) => files::write(p, data, access),
        None => std::io::stdout().write_all(data).map_err(|e| e.to_string()),
    }
}

/// Why a command stopped short: an error for stderr, or an operation the service accepted but holds for
/// quorum approval (HTTP 202; not an error, so the command succeeds and says how to approve it).
enum Failure {
    Message(String),
    Pending(keyward_api::ApprovalPending),
    /// Standard output was closed by its reader (`| head`): the program ends quietly.
    ClosedPipe,
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Failure::ClosedPipe
        } else {
            Failure::Message(e.to_string())
        }
    }
}

impl From<String> for Failure {
    fn from(m: String) -> Self {
        Failure::Message(m)
    }
}

impl From<&str> for Failure {
    fn from(m: &str) -> Self {
        Failure::Message(m.to_string())
    }
}

impl From<keyward_client::Error> for Failure {
    fn from(e: keyward_client::Error) -> Self {
        match e {
            keyward_client::Error::Pending(p) => Failure::Pending(p),
            other => Failure::Message(other.to_string()),
        }
    }
}

type Res = Result<(), Failure>;

async fn run(cli: Cli) -> Res {
    let out = Out { json: cli.json };
    match cli.command {
        Command::Serve(a) => return serve(a).await,
        Command::BenchFloor { listen, durable } => return Ok(bench::floor(listen, durable).await?),
        Command::Bench(a) => return Ok(bench::run(a).await?),
        _ => {}
    }
    let client = Client::from_env().map_err(|e| e.to_string())?;
    let c = &client;
    let e = Failure::from;
    match cli.command {
        Command::Operator(op) => commands::operator::run(c, &out, op).await?,
        command @ (Command::Key { .. } | Command::Alias { .. }) => {
            commands::keys::run(c, &out, command).await?
        }
        command @ (Command::Encrypt { .. }
        | Command::Decrypt { .. }
        | Command::DataKey { .. }
        | Command::Sign { .. }
        | Command::Verify { .. }
        | Command::Mac { .. }
        | Command::Random { .. }
        | Command::Reencrypt { .. }
        | Command::DataKeyPair { .. }
        | Command::VerifyMac { .. }
        | Command::Derive { .. }
        | Command::Agree { .. }
        | Command::Protect(_)
        | Command::Unprotect(_)
        | Command::Decapsulate { .. }
        | Command::Csr { .. }
        | Command::Certificate { .. }) => commands::crypto::run(c, &out, command).await?,
        command @ (Command::Audit { .. }
        | Command::Metrics
        | Command::Report { .. }
        | Command::Checkpoint) => commands::audit::run(c, &out, command).await?,
        command @ (Command::Identity { .. }
        | Command::AccessKey { .. }
        | Command::Token { .. }
        | Command::Revoke { .. }
        | Command::Login { .. }
        | Command::Auth { .. }
        | Command::Policy { .. }
        | Command::Approval { .. }
        | Command::Mfa { .. }) => commands::access::run(c, &out, command).await?,
        Command::Whoami => out.value(&c.whoami().await.map_err(e)?),
        Command::Health => {
            let h = c.health().await.map_err(e)?;
            out.value(&h);
            if h.status == "degraded" {
                // Serving, but an operator must look: a status of its own for monitoring scripts.
                eprintln!(
                    "keyward: the node is degraded: {}",
                    h.reason.as_deref().unwrap_or("no reason given")
                );
                std::process::exit(2);
            }
            if h.status != "ok" {
                return Err(format!("the node is {}", h.status).into());
            }
        }
        Command::Serve(_) | Command::Bench(_) | Command::BenchFloor { .. } => {}
    }
    Ok(())
}

async fn get_json(c: &Client, path: &str) -> Result<serde_json::Value, Failure> {
    let (status, id, body) = c
        .answer(reqwest::Method::GET, path, None)
        .await
        .map_err(Failure::from)?;
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|x| x.to_string())?;
    if !status.is_success() {
        return Err(api_error(status, id.as_deref(), &v).into());
    }
    Ok(v)
}

/// A refusal as the client library shows one: code, status, message, and the request id that finds its
/// audit records (`keyward audit --request-id`).
fn api_error(status: reqwest::StatusCode, id: Option<&str>, v: &serde_json::Value) -> String {
    keyward_client::Error::Api {
        status: status.as_u16(),
        code: v["error"]["code"].as_str().unwrap_or("error").to_string(),
        message: v["error"]["message"]
            .as_str()
            .unwrap_or("no message")
            .to_string(),
        request_id: id.map(str::to_string),
    }
    .to_string()
}

/// Every entry of a paged list (`field` of each page), following `next_token` to the end.
async fn list_all(
    c: &keyward_client::Client,
    path: &str,
    field: &str,
) -> Result<Vec<serde_json::Value>, Failure> {
    let mut all = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let url = match &next {
            Some(t) => format!(
                "{path}?limit=1000&next_token={}",
                keyward_client::segment(t)
            ),
            None => format!("{path}?limit=1000"),
        };
        let (status, id, resp) = c
            .answer(reqwest::Method::GET, &url, None)
            .await
            .map_err(|x| Failure::from(x.to_string()))?;
        let v: serde_json::Value = serde_json::from_slice(&resp).unwrap_or(serde_json::Value::Null);
        if !status.is_success() {
            return Err(api_error(status, id.as_deref(), &v).into());
        }
        if let Some(items) = v[field].as_array() {
            all.extend(items.iter().cloned());
        }
        match v["next_token"].as_str() {
            Some(t) => next = Some(t.to_string()),
            None => return Ok(all),
        }
    }
}

fn print_raw(out: &Out, status: reqwest::StatusCode, id: Option<&str>, body: &[u8]) -> Res {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        return Err(api_error(status, id, &v).into());
    }
    if status == reqwest::StatusCode::ACCEPTED {
        if let Ok(p) = serde_json::from_value(v.clone()) {
            return Err(Failure::Pending(p));
        }
    }
    out.value(&v);
    Ok(())
}

async fn serve(a: ServeArgs) -> Res {
    let overrides = keyward_server::Overrides {
        listen: a.listen,
        data_dir: a.data_dir,
        store: a.store,
        tls_cert: a.tls_cert,
        tls_key: a.tls_key,
        tls_client_ca: a.tls_client_ca,
        insecure_http: a.insecure_http,
        dev: a.dev,
        pkcs11_module: a.pkcs11_module,
        pkcs11_token_label: a.pkcs11_token_label,
        // Only from the environment: a PIN on the command line would show in the process list.
        pkcs11_pin: std::env::var("KEYWARD_PKCS11_PIN")
            .ok()
            .map(zeroize::Zeroizing::new),
        pkcs11_pin_file: a.pkcs11_pin_file,
        log_format: a.log_format,
        vault_listen: a.vault_listen,
    };
    let config = keyward_server::Config::load_from(
        a.config.as_deref(),
        |name| std::env::var(name).ok(),
        &a.set,
        overrides,
    )?;
    keyward_server::log::init(config.log_format);
    let scheme = if config.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let (app, startup) = keyward_server::build(config)?;
    for note in &startup.notes {
        match note.strip_prefix("WARNING: ") {
            Some(warning) => tracing::warn!("{warning}"),
            None => tracing::info!("{note}"),
        }
    }
    if let Some(token) = &startup.root_token {
        println!("Root token: {}", token.as_str());
    }
    // Both signal handlers are in place before the service says it listens.
    let signal = keyward_server::shutdown_signal();
    let bound = keyward_server::bind(&app).await?;
    let listen = bound.local_addr()?;
    let _ = std::io::stdout().flush();
    tracing::info!("listening on {scheme}://{listen}");
    if let Some(vault) = bound.vault_addr() {
        tracing::info!("Vault API listening on {scheme}://{vault}");
    }
    let stopping = async {
        signal.await;
        tracing::info!("stopping: new connections refused, letting in-flight requests finish");
    };
    keyward_server::serve(app, bound, stopping).await?;
    tracing::info!("shut down; keys dropped from memory");
    Ok(())
}

/// A reader that stops reading (`keyward key list | head -1`) ends the program quietly, as it ends other
/// Unix tools: the standard library reports the closed pipe by panicking in `println!`, and this says
/// nothing for that one case and leaves with the status a shell gives a program ended by SIGPIPE.
fn quiet_on_closed_stdout() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        report(info)
    }));
}

fn main() -> ExitCode {
    quiet_on_closed_stdout();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keyward: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = Out { json: cli.json };
    let result = rt.block_on(run(cli));
    // A stopped server has let its requests finish and sealed; work still on a blocking thread (a
    // background round's store housekeeping or scheduled rotation, each crash-safe by design) must not keep
    // the process alive for long.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Pending(p)) => {
            out.value(&p);
            eprintln!(
                "Waiting for quorum approval: approvers run `keyward approval approve {}`; the last \
                 approval runs the operation.",
                p.approval_id
            );
            ExitCode::SUCCESS
        }
        Err(Failure::Message(e)) => {
            eprintln!("keyward: {e}");
            // The server cannot tell a missing token from a wrong one; the CLI can.
            let no_token = std::env::var("KEYWARD_TOKEN").map_or(true, |t| t.trim().is_empty());
            // rustls names certificate problems by variant; say what to do about them.
            if e.contains("CaUsedAsEndEntity") {
                eprintln!(
                    "keyward: the server presents a CA certificate as its own: serve a leaf certificate issued by that CA (README, Production start)"
                );
            } else if e.contains("UnknownIssuer") {
                eprintln!(
                    "keyward: the server's certificate is not issued by a CA this client trusts: set KEYWARD_CACERT to the CA's PEM file"
                );
            }
            if e.starts_with("Unauthenticated") && no_token {
                eprintln!(
                    "keyward: KEYWARD_TOKEN is not set: export a token (`keyward login NAME` prints one), or use a client certificate"
                );
            }
            ExitCode::FAILURE
        }
        // The status a shell reports for a program ended by SIGPIPE, as other tools end.
        Err(Failure::ClosedPipe) => ExitCode::from(141),
    }
}
