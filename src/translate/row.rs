//! [`Row`]: column name → JSON value, in the relation's column order.
//!
//! serde_json's own `Map` sorts its keys (unless the crate-wide `preserve_order` feature is on),
//! so a message's rows use this small ordered map instead: serialised as a JSON object whose
//! members keep the order they were pushed in, read back in document order.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// The value standing for an unchanged TOAST column: `{"unchanged_toast": true}`.
pub fn unchanged_toast() -> Value {
    let mut m = Map::new();
    m.insert("unchanged_toast".into(), Value::Bool(true));
    Value::Object(m)
}

/// Whether `v` is the unchanged-TOAST marker of [`unchanged_toast`].
pub fn is_unchanged_toast(v: &Value) -> bool {
    matches!(v, Value::Object(m) if m.len() == 1 && m.get("unchanged_toast") == Some(&Value::Bool(true)))
}

/// Column values of one row, in column order. Names are unique.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row(Vec<(String, Value)>);

impl Row {
    pub fn with_capacity(n: usize) -> Self {
        Row(Vec::with_capacity(n))
    }

    /// Appends a column. The caller keeps names unique (a relation's columns are).
    pub fn push(&mut self, column: String, value: Value) {
        self.0.push((column, value));
    }

    /// The value of `column`, if the row has it.
    pub fn get(&self, column: &str) -> Option<&Value> {
        self.0.iter().find(|(c, _)| c == column).map(|(_, v)| v)
    }

    /// The columns and values, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(c, v)| (c.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The row as a serde_json map (key order then follows serde_json's features).
    pub fn into_map(self) -> Map<String, Value> {
        self.0.into_iter().collect()
    }
}

impl Serialize for Row {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (column, value) in &self.0 {
            map.serialize_entry(column, value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Row {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RowVisitor;
        impl<'de> Visitor<'de> for RowVisitor {
            type Value = Row;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of column values")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Row, A::Error> {
                let mut row = Row::with_capacity(access.size_hint().unwrap_or(0));
                while let Some((column, value)) = access.next_entry::<String, Value>()? {
                    if row.get(&column).is_some() {
                        return Err(serde::de::Error::custom(format!(
                            "column {column} appears twice in one row"
                        )));
                    }
                    row.push(column, value);
                }
                Ok(row)
            }
        }
        d.deserialize_map(RowVisitor)
    }
}
