//! What SQLSTATE codes mean for understudy: retry, or stop and tell the operator.
//! Codes: <https://www.postgresql.org/docs/15/errcodes-appendix.html>.

/// The SQLSTATE classification: `true` when a retry may succeed unchanged.
///
/// Definite: authentication (class 28), unknown database or schema (3D, 3F), syntax and access
/// rules (class 42: 42501 insufficient_privilege, 42704 undefined_object such as a missing slot or
/// publication, 42710 a slot that already exists), 55000 object_not_in_prerequisite_state
/// (wal_level, an invalidated slot), 53400 configuration_limit_exceeded (no free slot),
/// 0A000 feature_not_supported, 22023 invalid_parameter_value (a bad pgoutput option).
/// Everything else is transient, notably 08 (connection), 57P01..57P03 (shutdown, crash,
/// starting up), 55006 object_in_use (slot still held by a dying walsender), 53300
/// too_many_connections, 40001/40P01.
pub(super) fn sqlstate_is_transient(code: &str) -> bool {
    const DEFINITE_CODES: &[&str] = &["55000", "53400", "0A000", "22023"];
    const DEFINITE_CLASSES: &[&str] = &["28", "3D", "3F", "42"];
    if DEFINITE_CODES.contains(&code) {
        return false;
    }
    !DEFINITE_CLASSES.iter().any(|class| code.starts_with(class))
}

/// What the operator can do about a server error, beyond the server's own hint.
pub(super) fn advice(code: &str) -> Option<&'static str> {
    Some(match code {
        "28P01" | "28000" => {
            "check the user name and password (DSN, PGPASSWORD or the pgpass file) and the \
             server's pg_hba.conf"
        }
        "42501" => {
            "grant the missing privilege to the role (a replication connection needs a role with \
             REPLICATION: ALTER ROLE name REPLICATION)"
        }
        "3D000" => "create the database or fix dbname in the DSN",
        "53400" => {
            "free a replication slot or WAL sender on the server (drop unused slots, or raise \
             max_replication_slots / max_wal_senders and restart it)"
        }
        "55006" => "another connection is using it; stop that one or wait for it to exit",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_classification_table() {
        let table = [
            ("28000", false, "invalid_authorization_specification"),
            ("28P01", false, "invalid_password"),
            ("42501", false, "insufficient_privilege"),
            (
                "42704",
                false,
                "undefined_object: slot or publication missing",
            ),
            ("42710", false, "duplicate_object: slot exists"),
            ("42601", false, "syntax_error"),
            (
                "55000",
                false,
                "object_not_in_prerequisite_state: wal_level",
            ),
            (
                "53400",
                false,
                "configuration_limit_exceeded: no free slots",
            ),
            ("3D000", false, "invalid_catalog_name: unknown database"),
            ("0A000", false, "feature_not_supported"),
            ("22023", false, "invalid_parameter_value"),
            ("55006", true, "object_in_use: slot active elsewhere"),
            ("55P03", true, "lock_not_available"),
            ("57P01", true, "admin_shutdown"),
            ("57P02", true, "crash_shutdown"),
            ("57P03", true, "cannot_connect_now"),
            ("57014", true, "query_canceled"),
            ("08006", true, "connection_failure"),
            ("08P01", true, "protocol_violation"),
            ("53300", true, "too_many_connections"),
            ("53100", true, "disk_full"),
            ("40001", true, "serialization_failure"),
            ("40P01", true, "deadlock_detected"),
            ("XX000", true, "internal_error"),
            ("58P01", true, "undefined_file"),
        ];
        for (code, transient, what) in table {
            assert_eq!(sqlstate_is_transient(code), transient, "{code} {what}");
        }
    }
}
