//! Every load-time rejection, with the line it must name and a piece of its reason.

use crate::translate::Rules;

/// A header every case starts with, so that the problem is never on line 1 by accident.
const HEAD: &str = "# rules for the test\n[tables.\"nms.alarm\"]\nentity = \"alarm\"\n";

#[test]
fn bad_rules_name_the_line_and_the_reason() {
    let cases: &[(&str, &str, usize, &str)] = &[
        ("toml syntax", "[[tables.\"nms.alarm\".update]]\nkind = \"unterminated\n", 5, "string"),
        ("unknown top-level key", "\n[table.\"nms.x\"]\nentity = \"x\"\n", 5, "unknown field `table`"),
        ("unknown table key", "entitty = \"a\"\n", 4, "unknown field `entitty`"),
        ("unknown rule key", "[[tables.\"nms.alarm\".update]]\nkind = \"k\"\nchange = [\"a\"]\n", 6, "unknown field `change`"),
        ("unknown condition key", "[[tables.\"nms.alarm\".update]]\nkind = \"k\"\nnew = { a = { eq = \"x\" } }\n", 6, "unknown field `eq`"),
        ("unknown operation", "[[tables.\"nms.alarm\".upsert]]\nkind = \"k\"\n", 4, "unknown field `upsert`"),
        ("wrong type", "[[tables.\"nms.alarm\".update]]\nkind = 5\n", 5, "invalid type"),
        ("missing kind", "\n[[tables.\"nms.alarm\".update]]\nchanged = [\"a\"]\n", 5, "missing field `kind`"),
        ("unknown value type", "values = { id = \"int\" }\n", 4, "unknown variant `int`"),
        ("duplicate table", "\n[tables.\"nms.alarm\"]\n", 5, "duplicate"),
        ("unqualified table", "\n[tables.alarm]\nentity = \"a\"\n", 5, "table \"alarm\" is not schema-qualified"),
        ("empty entity", "\n[tables.\"nms.x\"]\nentity = \" \"\n", 6, "entity of nms.x is empty"),
        ("empty key", "key = []\n", 4, "key of nms.alarm is empty"),
        ("empty kind", "[[tables.\"nms.alarm\".insert]]\nkind = \"\"\n", 5, "has an empty kind"),
        ("changed on insert", "[[tables.\"nms.alarm\".insert]]\nkind = \"k\"\nchanged = [\"a\"]\n", 6, "`changed` cannot match in a insert rule"),
        ("changed on delete", "[[tables.\"nms.alarm\".delete]]\nkind = \"k\"\n\nchanged = [\"a\"]\n", 7, "`changed` cannot match in a delete rule"),
        ("changed on truncate", "[[tables.\"nms.alarm\".truncate]]\nkind = \"k\"\nchanged = [\"a\"]\n", 6, "`changed` cannot match in a truncate rule"),
        ("changed empty", "[[tables.\"nms.alarm\".update]]\nkind = \"k\"\nchanged = []\n", 6, "`changed = []` can never match"),
        ("new on delete", "[[tables.\"nms.alarm\".delete]]\nkind = \"k\"\nnew = { a = { is_null = true } }\n", 6, "`new` condition on a cannot match in a delete rule"),
        ("new on truncate", "[[tables.\"nms.alarm\".truncate]]\nkind = \"k\"\nnew = { a = { is_null = true } }\n", 6, "`new` condition on a cannot match in a truncate rule"),
        ("old on insert", "[[tables.\"nms.alarm\".insert]]\nkind = \"k\"\nold = { a = { is_null = true } }\n", 6, "`old` condition on a cannot match in a insert rule"),
        ("old on truncate", "[[tables.\"nms.alarm\".truncate]]\nkind = \"k\"\n[tables.\"nms.alarm\".truncate.old]\nb = { is_null = true }\n", 7, "`old` condition on b cannot match in a truncate rule"),
        ("empty condition", "[[tables.\"nms.alarm\".update]]\nkind = \"k\"\nnew = { a = {} }\n", 6, "condition on a is empty"),
        ("null and equals", "[[tables.\"nms.alarm\".update]]\nkind = \"k\"\n[tables.\"nms.alarm\".update.new]\nx = { is_null = true }\ny = { is_null = true, equals = \"v\" }\n", 8, "condition on y cannot match: a value cannot be NULL and equal \"v\""),
        ("rule after a catch-all", "[[tables.\"nms.alarm\".update]]\nkind = \"all\"\n[[tables.\"nms.alarm\".update]]\nkind = \"never\"\nchanged = [\"a\"]\n", 7, "update rule \"never\" of nms.alarm can never match: the rule at line 5 has no conditions"),
    ];
    for &(what, tail, line, reason) in cases {
        let text = format!("{HEAD}{tail}");
        let err = match Rules::from_toml_str(&text, "rules.toml") {
            Ok(_) => panic!("{what}: accepted\n{text}"),
            Err(e) => e,
        };
        let msg = err.to_string();
        assert_eq!(err.line(), Some(line), "{what}: {msg}\n{text}");
        assert!(
            msg.starts_with(&format!("rules.toml line {line}: ")),
            "{what}: {msg}"
        );
        assert!(msg.contains(reason), "{what}: {msg:?} lacks {reason:?}");
        assert!(!msg.contains('\n'), "{what}: not one line: {msg:?}");
    }
}

#[test]
fn the_first_problem_in_the_file_is_reported() {
    let text = format!(
        "{HEAD}[[tables.\"nms.alarm\".update]]\nkind = \"\"\n[[tables.\"nms.alarm\".insert]]\nkind = \"k\"\nchanged = [\"a\"]\n"
    );
    let err = Rules::from_toml_str(&text, "r.toml").unwrap_err();
    assert_eq!(err.line(), Some(5), "{err}");
}

#[test]
fn the_same_rules_without_the_mistake_load() {
    let text = format!(
        "{HEAD}[[tables.\"nms.alarm\".update]]\nkind = \"some\"\nchanged = [\"a\"]\nnew = {{ a = {{ is_null = false, equals = \"v\" }} }}\nold = {{ a = {{ is_null = true }} }}\n[[tables.\"nms.alarm\".update]]\nkind = \"all\"\n[[tables.\"nms.alarm\".truncate]]\nkind = \"t\"\n"
    );
    let rules = Rules::from_toml_str(&text, "r.toml").unwrap();
    assert_eq!(rules.tables(), ["nms.alarm"]);
    assert_eq!(rules.source_name(), "r.toml");
    assert!(Rules::from_toml_str("", "empty.toml")
        .unwrap()
        .tables()
        .is_empty());
}
