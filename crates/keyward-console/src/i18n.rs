//! English and Simplified Chinese. Pages are written in English; [`Lang::t`] gives the Chinese of each
//! label, and the English itself for anything it does not know (an API message, a name).

/// The language of a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lang {
    /// English.
    En,
    /// Simplified Chinese.
    Zh,
}

impl Lang {
    /// The language a browser asks for first, among English and Chinese (`zh`, `zh-CN`, `zh-Hans`, ...).
    pub(crate) fn from_accept(header: &str) -> Lang {
        let mut best = (0.0_f32, Lang::En);
        for part in header.split(',') {
            let mut it = part.split(';');
            let tag = it.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = it
                .find_map(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .and_then(|v| v.parse::<f32>().ok())
                })
                .unwrap_or(1.0);
            let lang = if tag.starts_with("zh") {
                Some(Lang::Zh)
            } else if tag.starts_with("en") {
                Some(Lang::En)
            } else {
                None
            };
            if let Some(l) = lang {
                if q > best.0 {
                    best = (q, l);
                }
            }
        }
        best.1
    }

    /// The label in this language.
    pub(crate) fn t(self, en: &str) -> &str {
        match self {
            Lang::En => en,
            Lang::Zh => zh(en).unwrap_or(en),
        }
    }
}

fn zh(en: &str) -> Option<&'static str> {
    Some(match en {
        "(no alias)" => "（无别名）",
        "Access" => "访问控制",
        "Access by principal" => "按主体统计的访问",
        "Action" => "操作",
        "Actions" => "操作",
        "Add alias" => "添加别名",
        "Alias" => "别名",
        "Aliases" => "别名",
        "Aliases changed." => "别名已更改。",
        "Approval" => "审批",
        "Approvals" => "审批",
        "Approvals needed to destroy or export (quorum)" => "销毁或导出所需审批数（法定人数）",
        "Approvals waiting for you" => "等待您审批的请求",
        "Approve" => "批准",
        "Approved." => "已批准。",
        "Archive" => "归档",
        "Archived" => "已归档",
        "Audit" => "审计",
        "Audit chain" => "审计链",
        "Back to the overview" => "返回概览",
        "Broken" => "已损坏",
        "Cancel deletion" => "取消删除",
        "Closed" => "已结束",
        "Compliance" => "合规",
        "Create" => "创建",
        "Create a key" => "创建密钥",
        "Create identity" => "创建身份",
        "Create token" => "创建令牌",
        "Created" => "创建时间",
        "Created." => "已创建。",
        "Days before deletion (7–30)" => "删除前等待天数（7–30）",
        "Deletion cancelled; the key is disabled." => "已取消删除；密钥处于禁用状态。",
        "Deletion date" => "删除日期",
        "Deletion scheduled." => "已计划删除。",
        "Description" => "描述",
        "Destroyed" => "已销毁",
        "Directory account (LDAP)" => "目录账户（LDAP）",
        "Disable" => "禁用",
        "Disabled" => "已禁用",
        "Disabled." => "已禁用。",
        "Done." => "完成。",
        "Download a CSR" => "下载证书签名请求（CSR）",
        "Download as HTML" => "下载 HTML",
        "Download as JSON" => "下载 JSON",
        "Download the public key (PEM)" => "下载公钥（PEM）",
        "Due in the next 30 days" => "未来 30 天内到期",
        "Enable" => "启用",
        "Enabled" => "已启用",
        "Enabled." => "已启用。",
        "Expires" => "过期时间",
        "Export these records (JSON lines)" => "导出这些记录（JSON Lines）",
        "Filter" => "筛选",
        "Held for approval: others must approve it." => "已提交审批：需要其他人批准。",
        "Identities" => "身份",
        "Inventory" => "密钥清单",
        "Key" => "密钥",
        "Key id" => "密钥 ID",
        "Key or policy" => "密钥或策略",
        "Key or resource" => "密钥或资源",
        "Keys" => "密钥",
        "Keys by spec" => "按规格统计密钥",
        "Keys by state" => "按状态统计密钥",
        "Kind" => "类型",
        "Last seen" => "最后心跳",
        "Lifetime (seconds)" => "有效期（秒）",
        "Make primary" => "设为主版本",
        "Name" => "名称",
        "New policy" => "新建策略",
        "Next" => "下一页",
        "Next rotation" => "下次轮换",
        "No keys yet." => "尚无密钥。",
        "Node" => "节点",
        "Nodes" => "节点",
        "Nothing due." => "没有到期事项。",
        "Nothing waits for you." => "没有等待您处理的审批。",
        "Operation" => "操作",
        "Origin" => "来源",
        "Outcome" => "结果",
        "Overview" => "概览",
        "Password" => "密码",
        "Pending" => "待处理",
        "Pending deletions" => "待删除",
        "PendingDeletion" => "待删除",
        "PendingImport" => "待导入",
        "Policies" => "策略",
        "Policy name" => "策略名称",
        "Previous" => "上一页",
        "Primary version" => "主版本",
        "Primary version set." => "已设置主版本。",
        "Principal" => "主体",
        "Public key" => "公钥",
        "Refused" => "已拒绝",
        "Reject" => "驳回",
        "Rejected." => "已驳回。",
        "Remove" => "移除",
        "Requested by" => "申请人",
        "Requests per minute, last hour" => "最近一小时每分钟请求数",
        "Restore" => "恢复",
        "Revoke" => "吊销",
        "Roles" => "角色",
        "Root of trust" => "信任根",
        "Rotate" => "轮换",
        "Rotate every (days)" => "轮换周期（天）",
        "Rotated: a new primary version." => "已轮换：生成了新的主版本。",
        "Rotation overdue" => "轮换逾期",
        "Save policy" => "保存策略",
        "Save tags" => "保存标签",
        "Saved." => "已保存。",
        "Schedule deletion" => "计划删除",
        "Seal state" => "封印状态",
        "Sealed" => "已封印",
        "Sign in" => "登录",
        "Sign in with a password" => "使用密码登录",
        "Sign in with a token" => "使用令牌登录",
        "Sign out" => "退出登录",
        "Signs in with" => "登录方式",
        "Source" => "来源地址",
        "Spec" => "规格",
        "State" => "状态",
        "Status" => "状态",
        "Subject" => "主题",
        "TOTP code (when enrolled)" => "TOTP 动态码（已绑定时）",
        "Tags" => "标签",
        "Tags are lines of name=value." => "标签每行一个 name=value。",
        "Tags saved." => "标签已保存。",
        "The audit chain does NOT verify." => "审计链校验失败。",
        "The audit chain verifies: every record is in place and unaltered." => "审计链校验通过：所有记录完整且未被篡改。",
        "The console opens a session of its own; signing out revokes the session, not this token." => "控制台会创建自己的会话；退出登录吊销的是该会话，而不是此令牌。",
        "The document is not JSON:" => "文档不是有效的 JSON：",
        "The new token, shown this once:" => "新令牌（仅显示这一次）：",
        "This form did not come from this console, or its page is too old. Nothing was changed." => "此表单并非来自本控制台，或页面已过期。未做任何更改。",
        "Time" => "时间",
        "Token" => "令牌",
        "Token id" => "令牌 ID",
        "Token revoked." => "令牌已吊销。",
        "Tokens" => "令牌",
        "Unsealed" => "已解封",
        "Usage" => "用途",
        "Verified whole" => "校验完整",
        "Verify the chain" => "校验审计链",
        "Version" => "版本",
        "Version changed." => "版本已更改。",
        "Versions" => "版本",
        "Weak keys" => "弱密钥",
        "What" => "事项",
        "When" => "时间",
        "Who used this key: its audit trail" => "谁使用过此密钥：审计记录",
        "Your session ended. Sign in again." => "会话已结束，请重新登录。",
        "alias, id or description" => "别名、ID 或描述",
        "allow" => "允许",
        "any outcome" => "任意结果",
        "any spec" => "任意规格",
        "any state" => "任意状态",
        "any usage" => "任意用途",
        "broken" => "已损坏",
        "certificate" => "证书",
        "deletion" => "删除",
        "deny" => "拒绝",
        "error" => "错误",
        "executed" => "已执行",
        "expired" => "已过期",
        "failed" => "失败",
        "key id" => "密钥 ID",
        "leader" => "主节点",
        "name" => "名称",
        "no role" => "无角色",
        "off" => "关",
        "on" => "开",
        "page" => "页",
        "password" => "密码",
        "pending" => "待审批",
        "policies, comma-separated" => "策略，以逗号分隔",
        "primary" => "主版本",
        "principal" => "主体",
        "records" => "条记录",
        "refused or failed" => "被拒绝或失败",
        "rejected" => "已驳回",
        "requests" => "请求",
        "rotation" => "轮换",
        "service" => "服务",
        "serving" => "服务中",
        "silent" => "无响应",
        "since" => "起始时间",
        "until" => "结束时间",
        "user" => "用户",
        "verified just now" => "刚刚校验",
        "whole" => "完整",
        "Checked by the nodes at" => "节点最近检查于",
        "Last full verification" => "最近一次完整校验",
        "No full verification from the console yet." => "尚未从控制台进行完整校验。",
        "No such page." => "没有这个页面。",
        "No such sign-in." => "没有这种登录方式。",
        "This sign-in was not started here, or took too long. Start again." => "此登录并非从这里发起，或耗时过长。请重新开始。",
        "The identity provider did not sign you in" => "身份提供方未能让您登录",
        "The ID token was not issued for this sign-in (nonce). Nothing was opened." => "该 ID 令牌不是为此次登录签发的（nonce 不符）。未打开任何会话。",
        "Sign in with" => "使用以下方式登录：",
        "A policy may ask for MFA to see or approve a request: confirm this session with your current TOTP code." => "策略可能要求多因素认证才能查看或审批请求：请用当前的 TOTP 动态码确认本会话。",
        "Confirm with TOTP" => "用 TOTP 确认",
        "This session now counts as MFA." => "本会话已通过多因素认证。",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_browser_s_first_choice_wins() {
        assert_eq!(Lang::from_accept("zh-CN,zh;q=0.9,en;q=0.8"), Lang::Zh);
        assert_eq!(Lang::from_accept("en-US,en;q=0.9,zh;q=0.5"), Lang::En);
        assert_eq!(Lang::from_accept("fr, zh;q=0.3"), Lang::Zh);
        assert_eq!(Lang::from_accept(""), Lang::En);
        assert_eq!(Lang::Zh.t("Keys"), "密钥");
        assert_eq!(Lang::Zh.t("an API message"), "an API message");
    }
}
