//! A JSON reader for token headers and claims that rejects duplicate member names at every
//! depth (two `exp` members must not mean whichever a parser happens to keep), keeps integers
//! exact, and borrows strings from the input where it can.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A parsed JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    /// An integer that fits in `i64`.
    Int(i64),
    /// Any other number: fractional, exponent form, or out of `i64` range.
    OtherNumber,
    Str(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    /// Parses a whole document that must be a JSON object.
    pub fn parse_object(bytes: &'a [u8]) -> Option<Vec<(Cow<'a, str>, Json<'a>)>> {
        match serde_json::from_slice::<Json<'a>>(bytes) {
            Ok(Json::Object(members)) => Some(members),
            _ => None,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Bool(_) => "a boolean",
            Self::Int(_) | Self::OtherNumber => "a number",
            Self::Str(_) => "a string",
            Self::Array(_) => "an array",
            Self::Object(_) => "an object",
        }
    }
}

/// The first member named `name`; duplicates were rejected at parse time.
pub fn member<'m, 'a>(members: &'m [(Cow<'a, str>, Json<'a>)], name: &str) -> Option<&'m Json<'a>> {
    members.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Json::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Json::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(i64::try_from(v).map_or(Json::OtherNumber, Json::Int))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Json::OtherNumber)
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element()? {
            out.push(v);
        }
        Ok(Json::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out: Vec<(Cow<'de, str>, Json<'de>)> = Vec::new();
        // Headers and claims have a handful of members: a linear scan is cheapest there. Past 16
        // members a set keeps hostile objects (up to 8 KiB of them) linear.
        let mut seen: Option<HashSet<Cow<'de, str>>> = None;
        while let Some(key) = map.next_key::<CowStr<'de>>()? {
            let key = key.0;
            let duplicate = if let Some(set) = &mut seen {
                !set.insert(key.clone())
            } else {
                let dup = out.iter().any(|(k, _)| *k == key);
                if out.len() >= 16 {
                    seen = Some(
                        out.iter()
                            .map(|(k, _)| k.clone())
                            .chain([key.clone()])
                            .collect(),
                    );
                }
                dup
            };
            if duplicate {
                return Err(de::Error::custom("duplicate member name"));
            }
            let value = map.next_value()?;
            out.push((key, value));
        }
        Ok(Json::Object(out))
    }
}

struct CowStr<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_duplicates_at_any_depth() {
        assert!(Json::parse_object(br#"{"a":1,"b":2}"#).is_some());
        assert!(Json::parse_object(br#"{"a":1,"a":2}"#).is_none());
        assert!(Json::parse_object(br#"{"x":{"a":1,"a":2}}"#).is_none());
        assert!(Json::parse_object(br#"{"x":[{"a":1,"a":2}]}"#).is_none());
        // Escapes that decode to the same name are the same name.
        assert!(Json::parse_object(br#"{"exp":1,"\u0065xp":2}"#).is_none());
        let many: String = (0..40).fold(String::new(), |acc, i| acc + &format!("\"k{i}\":0,"));
        assert!(Json::parse_object(format!("{{{many}\"k7\":1}}").as_bytes()).is_none());
        assert!(Json::parse_object(format!("{{{many}\"z\":1}}").as_bytes()).is_some());
    }

    #[test]
    fn keeps_numbers_exact_and_refuses_non_objects() {
        let m = Json::parse_object(
            br#"{"i":9223372036854775807,"u":9223372036854775808,"f":1.5,"e":1e3}"#,
        )
        .unwrap();
        assert_eq!(member(&m, "i"), Some(&Json::Int(i64::MAX)));
        assert_eq!(member(&m, "u"), Some(&Json::OtherNumber));
        assert_eq!(member(&m, "f"), Some(&Json::OtherNumber));
        assert_eq!(member(&m, "e"), Some(&Json::OtherNumber));
        for bad in [
            &b"[]"[..],
            b"1",
            b"\"x\"",
            b"{} {}",
            b"{",
            b"",
            b"{\"a\":1,}",
        ] {
            assert!(
                Json::parse_object(bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(1000), "]".repeat(1000));
        assert!(Json::parse_object(deep.as_bytes()).is_none());
    }
}
