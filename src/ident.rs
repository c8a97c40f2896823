//! SQL identifiers and literals as understudy writes them into statements.
//!
//! Names come from the primary's catalog (pgoutput Relation messages, `pg_publication_tables`)
//! and may hold upper case, spaces, quotes or reserved words: they are always double-quoted,
//! with embedded double quotes doubled, exactly as PostgreSQL's `quote_ident` would for the
//! hard cases. Literals get single quotes doubled (`standard_conforming_strings` is on).

/// `name` as a quoted SQL identifier.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for ch in name.chars() {
        if ch == '"' {
            out.push('"');
        }
        out.push(ch);
    }
    out.push('"');
    out
}

/// `schema.name`, both parts quoted.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// `value` as a quoted SQL string literal.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_hard_identifiers() {
        assert_eq!(quote_ident("alarms"), "\"alarms\"");
        assert_eq!(quote_ident("Order"), "\"Order\"");
        assert_eq!(quote_ident("select"), "\"select\"");
        assert_eq!(quote_ident("quo\"te"), "\"quo\"\"te\"");
        assert_eq!(quote_ident("with space"), "\"with space\"");
        assert_eq!(qualified("Types Test", "Order"), "\"Types Test\".\"Order\"");
    }

    #[test]
    fn quotes_literals() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(""), "''");
    }
}
