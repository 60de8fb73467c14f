//! Actions and built-in roles.
//!
//! Every endpoint is one `kms:<Action>`. Roles are fixed sets of actions with separation of duties: a
//! key-admin manages keys but cannot use them, a key-user uses keys but cannot manage them, an auditor only
//! reads. Evaluation is a bit test: the role table is built once.

macro_rules! actions {
    ($($variant:ident = $name:literal : $class:ident),+ $(,)?) => {
        /// One API action.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum Action { $(#[doc = $name] $variant),+ }

        impl Action {
            /// Every action, in declaration order.
            pub const ALL: &'static [Action] = &[$(Action::$variant),+];
            /// The `kms:<Action>` name.
            pub const fn name(self) -> &'static str { match self { $(Action::$variant => $name),+ } }
            /// The class that decides which built-in roles may perform it.
            pub const fn class(self) -> Class { match self { $(Action::$variant => Class::$class),+ } }
            /// Parses `kms:<Action>`.
            pub fn parse(s: &str) -> Option<Action> { match s { $($name => Some(Action::$variant),)+ _ => None } }
        }
    };
}

/// What kind of action, for the built-in roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// No authentication: health, status, init, unseal, login.
    Public,
    /// Operator actions on the service itself: admin only.
    System,
    /// Key management: admin, key-admin.
    Manage,
    /// Read key metadata: everyone authenticated with a role.
    Read,
    /// Cryptographic use: admin, key-user.
    Use,
    /// Audit and reports: admin, auditor.
    Audit,
    /// Identities, tokens, policies: admin only.
    Access,
    /// Secrets kept for other systems (the Vault API's KV): admin by role, anyone else by a policy that
    /// names the mount and path, so that holding a key role never reads a secret.
    Secrets,
    /// About the caller itself: anyone authenticated, whatever its roles and policies (a policy that hid
    /// from a caller who it is would protect nothing its credential does not already show).
    Own,
}

actions! {
    Health = "kms:Health": Public,
    Status = "kms:Status": Public,
    Init = "kms:Init": Public,
    Unseal = "kms:Unseal": Public,
    GenerateRoot = "kms:GenerateRoot": Public,
    Seal = "kms:Seal": System,
    RotateRoot = "kms:RotateRoot": System,
    PruneAudit = "kms:PruneAudit": System,
    Backup = "kms:Backup": System,
    Restore = "kms:Restore": System,
    GetMetrics = "kms:GetMetrics": System,
    CreateKey = "kms:CreateKey": Manage,
    ListKeys = "kms:ListKeys": Read,
    DescribeKey = "kms:DescribeKey": Read,
    UpdateKey = "kms:UpdateKey": Manage,
    EnableKey = "kms:EnableKey": Manage,
    DisableKey = "kms:DisableKey": Manage,
    RotateKey = "kms:RotateKey": Manage,
    ListKeyVersions = "kms:ListKeyVersions": Read,
    EnableKeyVersion = "kms:EnableKeyVersion": Manage,
    DisableKeyVersion = "kms:DisableKeyVersion": Manage,
    ArchiveKeyVersion = "kms:ArchiveKeyVersion": Manage,
    RestoreKeyVersion = "kms:RestoreKeyVersion": Manage,
    DestroyKeyVersion = "kms:DestroyKeyVersion": Manage,
    SetPrimaryVersion = "kms:SetPrimaryVersion": Manage,
    ScheduleKeyDeletion = "kms:ScheduleKeyDeletion": Manage,
    CancelKeyDeletion = "kms:CancelKeyDeletion": Manage,
    GetPublicKey = "kms:GetPublicKey": Read,
    GetImportParameters = "kms:GetImportParameters": Manage,
    ImportKeyMaterial = "kms:ImportKeyMaterial": Manage,
    DeleteImportedKeyMaterial = "kms:DeleteImportedKeyMaterial": Manage,
    ExportKey = "kms:ExportKey": Manage,
    PutAlias = "kms:PutAlias": Manage,
    DeleteAlias = "kms:DeleteAlias": Manage,
    ListAliases = "kms:ListAliases": Read,
    Encrypt = "kms:Encrypt": Use,
    Decrypt = "kms:Decrypt": Use,
    ReEncrypt = "kms:ReEncrypt": Use,
    GenerateDataKey = "kms:GenerateDataKey": Use,
    GenerateDataKeyPair = "kms:GenerateDataKeyPair": Use,
    Sign = "kms:Sign": Use,
    Verify = "kms:Verify": Use,
    GenerateMac = "kms:GenerateMac": Use,
    VerifyMac = "kms:VerifyMac": Use,
    DeriveKey = "kms:DeriveKey": Use,
    DeriveSharedSecret = "kms:DeriveSharedSecret": Use,
    Decapsulate = "kms:Decapsulate": Use,
    Protect = "kms:Protect": Use,
    Unprotect = "kms:Unprotect": Use,
    BlindIndex = "kms:BlindIndex": Use,
    GenerateRandom = "kms:GenerateRandom": Use,
    CreateCsr = "kms:CreateCsr": Use,
    IssueCertificate = "kms:IssueCertificate": Use,
    CreateIdentity = "kms:CreateIdentity": Access,
    CreateToken = "kms:CreateToken": Access,
    RevokeToken = "kms:RevokeToken": Access,
    EnrollMfa = "kms:EnrollMfa": Access,
    Login = "kms:Login": Public,
    PutPolicy = "kms:PutPolicy": Access,
    GetPolicy = "kms:GetPolicy": Access,
    DeletePolicy = "kms:DeletePolicy": Access,
    ListApprovals = "kms:ListApprovals": Read,
    GetApproval = "kms:GetApproval": Read,
    Approve = "kms:Approve": Manage,
    Reject = "kms:Reject": Manage,
    ReadAudit = "kms:ReadAudit": Audit,
    VerifyAudit = "kms:VerifyAudit": Audit,
    GetComplianceReport = "kms:GetComplianceReport": Audit,
    DestroyKey = "kms:DestroyKey": System,
    ExportAuditCheckpoint = "kms:ExportAuditCheckpoint": Audit,
    ListIdentities = "kms:ListIdentities": Access,
    GetIdentity = "kms:GetIdentity": Access,
    UpdateIdentity = "kms:UpdateIdentity": Access,
    DeleteIdentity = "kms:DeleteIdentity": Access,
    ListPolicies = "kms:ListPolicies": Access,
    ListTokens = "kms:ListTokens": Access,
    CreateAccessKey = "kms:CreateAccessKey": Access,
    ListAccessKeys = "kms:ListAccessKeys": Access,
    DeleteAccessKey = "kms:DeleteAccessKey": Access,
    GetCallerIdentity = "kms:GetCallerIdentity": Own,
    KvRead = "kv:Read": Secrets,
    KvWrite = "kv:Write": Secrets,
    KvList = "kv:List": Secrets,
    KvDelete = "kv:Delete": Secrets,
    KvListMounts = "kv:ListMounts": Own,
    Hash = "kms:Hash": Own,
    NoSuchEndpoint = "kms:NoSuchEndpoint": Own,
    LoginJwt = "kms:LoginJwt": Public,
    LoginLdap = "kms:LoginLdap": Public,
    PutJwtIssuer = "kms:PutJwtIssuer": Access,
    GetJwtIssuer = "kms:GetJwtIssuer": Access,
    ListJwtIssuers = "kms:ListJwtIssuers": Access,
    DeleteJwtIssuer = "kms:DeleteJwtIssuer": Access,
    PutLdapConfig = "kms:PutLdapConfig": Access,
    GetLdapConfig = "kms:GetLdapConfig": Access,
    DeleteLdapConfig = "kms:DeleteLdapConfig": Access,
    Logout = "kms:Logout": Own,
    CreateSession = "kms:CreateSession": Own,
    ListNodes = "kms:ListNodes": Read,
    GetActivity = "kms:GetActivity": Audit,
    ListAuthMethods = "kms:ListAuthMethods": Public,
}

/// A built-in role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything.
    Admin,
    /// Manage keys, never use them.
    KeyAdmin,
    /// Use keys, never manage them.
    KeyUser,
    /// Read audit and reports.
    Auditor,
}

impl Role {
    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "key-admin" => Some(Role::KeyAdmin),
            "key-user" => Some(Role::KeyUser),
            "auditor" => Some(Role::Auditor),
            _ => None,
        }
    }

    /// The role's name.
    pub const fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::KeyAdmin => "key-admin",
            Role::KeyUser => "key-user",
            Role::Auditor => "auditor",
        }
    }

    /// Whether the role allows an action.
    pub const fn allows(self, action: Action) -> bool {
        matches!(
            (self, action.class()),
            (_, Class::Public | Class::Own)
                | (Role::Admin, _)
                | (Role::KeyAdmin, Class::Manage | Class::Read)
                | (Role::KeyUser, Class::Use | Class::Read)
                | (Role::Auditor, Class::Audit | Class::Read)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_parse_back() {
        let mut seen = std::collections::HashSet::new();
        for a in Action::ALL {
            assert!(seen.insert(a.name()), "duplicate {}", a.name());
            assert_eq!(Action::parse(a.name()), Some(*a));
        }
    }

    /// The whole matrix, written out independently of the class table above.
    #[test]
    fn every_role_against_every_action() {
        use Action::*;
        let public = [
            Health,
            Status,
            Init,
            Unseal,
            GenerateRoot,
            Login,
            LoginJwt,
            LoginLdap,
            Logout,
            CreateSession,
            ListAuthMethods,
            GetCallerIdentity,
            KvListMounts,
            Hash,
            NoSuchEndpoint,
        ];
        let read = [
            ListKeys,
            DescribeKey,
            ListKeyVersions,
            GetPublicKey,
            ListAliases,
            ListApprovals,
            GetApproval,
            ListNodes,
        ];
        let manage = [
            CreateKey,
            UpdateKey,
            EnableKey,
            DisableKey,
            RotateKey,
            EnableKeyVersion,
            DisableKeyVersion,
            ArchiveKeyVersion,
            RestoreKeyVersion,
            DestroyKeyVersion,
            SetPrimaryVersion,
            ScheduleKeyDeletion,
            CancelKeyDeletion,
            GetImportParameters,
            ImportKeyMaterial,
            DeleteImportedKeyMaterial,
            ExportKey,
            PutAlias,
            DeleteAlias,
            Approve,
            Reject,
        ];
        let usage = [
            Encrypt,
            Decrypt,
            ReEncrypt,
            GenerateDataKey,
            GenerateDataKeyPair,
            Sign,
            Verify,
            GenerateMac,
            VerifyMac,
            DeriveKey,
            DeriveSharedSecret,
            Decapsulate,
            Protect,
            Unprotect,
            BlindIndex,
            GenerateRandom,
            CreateCsr,
            IssueCertificate,
        ];
        let audit = [
            ReadAudit,
            VerifyAudit,
            GetComplianceReport,
            ExportAuditCheckpoint,
            GetActivity,
        ];
        let expected = |role: Role, a: Action| match role {
            Role::Admin => true,
            Role::KeyAdmin => public.contains(&a) || read.contains(&a) || manage.contains(&a),
            Role::KeyUser => public.contains(&a) || read.contains(&a) || usage.contains(&a),
            Role::Auditor => public.contains(&a) || read.contains(&a) || audit.contains(&a),
        };
        for role in [Role::Admin, Role::KeyAdmin, Role::KeyUser, Role::Auditor] {
            for &a in Action::ALL {
                assert_eq!(
                    role.allows(a),
                    expected(role, a),
                    "{} / {}",
                    role.name(),
                    a.name()
                );
            }
        }
        // Nothing but admin may touch the service, identities or policies.
        for a in [
            Seal,
            RotateRoot,
            PruneAudit,
            Backup,
            Restore,
            GetMetrics,
            CreateIdentity,
            ListIdentities,
            GetIdentity,
            UpdateIdentity,
            DeleteIdentity,
            CreateToken,
            ListTokens,
            RevokeToken,
            EnrollMfa,
            PutPolicy,
            GetPolicy,
            ListPolicies,
            DeletePolicy,
            DestroyKey,
            KvRead,
            KvWrite,
            KvList,
            KvDelete,
            PutJwtIssuer,
            GetJwtIssuer,
            ListJwtIssuers,
            DeleteJwtIssuer,
            PutLdapConfig,
            GetLdapConfig,
            DeleteLdapConfig,
        ] {
            assert!(
                [Role::KeyAdmin, Role::KeyUser, Role::Auditor]
                    .iter()
                    .all(|r| !r.allows(a)),
                "{}",
                a.name()
            );
        }
    }

    #[test]
    fn separation_of_duties() {
        assert!(
            Role::KeyAdmin.allows(Action::CreateKey) && !Role::KeyAdmin.allows(Action::Encrypt)
        );
        assert!(
            Role::KeyUser.allows(Action::Decrypt)
                && !Role::KeyUser.allows(Action::ScheduleKeyDeletion)
        );
        assert!(Role::Auditor.allows(Action::ReadAudit) && !Role::Auditor.allows(Action::Sign));
        assert!(!Role::KeyAdmin.allows(Action::Seal) && Role::Admin.allows(Action::Seal));
    }
}
