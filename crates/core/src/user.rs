//! People: users of an issuer, invitations to become one, and their web sessions.

use crate::clock::UnixTime;
use crate::error::{Error, Result};
use crate::ids::{InvitationId, IssuerId, UserId};
use crate::role::{Role, RoleCatalog, RoleSet};
use crate::secret::PasswordHashText;

/// A person of one issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub issuer_id: IssuerId,
    /// As entered; unique per issuer regardless of case.
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub roles: RoleSet,
    pub password_hash: PasswordHashText,
    pub created_at: UnixTime,
}

impl User {
    pub fn is_account_holder(&self) -> bool {
        self.roles.contains(Role::ACCOUNT_HOLDER)
    }
    pub fn display_name(&self) -> String {
        format!("{} {}", self.first_name, self.last_name)
    }
}

/// An invitation: a one-time accept link, valid for [`INVITATION_LIFETIME`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    pub id: InvitationId,
    pub issuer_id: IssuerId,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub roles: RoleSet,
    pub created_by: String,
    pub created_at: UnixTime,
    pub expires_at: UnixTime,
}

/// Three days, as App Store Connect's invitations.
pub const INVITATION_LIFETIME: i64 = 3 * 24 * 3600;

/// A live web session, as found by its ID's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: User,
    pub created_at: UnixTime,
    pub last_seen_at: UnixTime,
}

/// The person-describing attributes of a user or invitation, validated.
#[derive(Debug, Clone)]
pub struct Person {
    pub email: String,
    pub first_name: String,
    pub last_name: String,
}

const MAX_NAME_CHARS: usize = 100;
/// Whether text holds a character that changes how the text around it shows without showing
/// itself: a control character, or a bidirectional override or isolate (U+202A..U+202E,
/// U+2066..U+2069, U+200E, U+200F, U+061C), which can make a name or a reason read as
/// something else on a page or in a log. Names, emails, key names and revoke reasons refuse
/// them (`allow` lists the controls a field may keep, such as a line break in a reason).
pub fn has_hidden_characters(text: &str, allow: &[char]) -> bool {
    text.chars()
        .any(|c| !allow.contains(&c) && is_hidden_character(c))
}

/// One character of [`has_hidden_characters`]: controls (C0, C1, and the line and paragraph
/// separators), direction marks, overrides and isolates, and the characters that take no space
/// or show nothing (zero-width spaces and joiners, word joiners, the byte-order mark, soft
/// hyphens, Hangul fillers, tag characters). Emoji variation selectors stay allowed.
pub fn is_hidden_character(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{2800}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{FFFE}'
                | '\u{FFFF}'
                | '\u{E000}'..='\u{F8FF}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E007F}'
                | '\u{E0100}'..='\u{E01EF}'
        )
}

/// The longest email address, in bytes (RFC 5321's 254 octets). One rule for accepting an
/// invitation, signing in and the sign-in throttle, so an address accepted is one that can
/// sign in.
pub const MAX_EMAIL_BYTES: usize = 254;

/// Whether an address is short enough to be a user's: counted in bytes, everywhere.
pub fn email_fits(email: &str) -> bool {
    email.len() <= MAX_EMAIL_BYTES
}

impl Person {
    pub fn validate(email: &str, first_name: &str, last_name: &str) -> Result<Self> {
        let email = email.trim();
        let (local, domain) = email.split_once('@').unwrap_or(("", ""));
        if !email_fits(email)
            || local.is_empty()
            || domain.is_empty()
            || domain.contains('@')
            || !domain.contains('.')
            || domain.starts_with('.')
            || domain.ends_with('.')
            || email.chars().any(char::is_whitespace)
            || has_hidden_characters(email, &[])
        {
            return Err(Error::attribute(
                "email",
                "email must be an address such as name@example.com.",
            ));
        }
        Ok(Self {
            email: email.to_owned(),
            first_name: validate_name("firstName", first_name)?,
            last_name: validate_name("lastName", last_name)?,
        })
    }
}

fn validate_name(field: &str, name: &str) -> Result<String> {
    let name = name.trim();
    let n = name.chars().count();
    if n == 0 {
        return Err(Error::attribute(field, format!("{field} is required.")));
    }
    if n > MAX_NAME_CHARS {
        return Err(Error::attribute(
            field,
            format!("{field} is at most {MAX_NAME_CHARS} characters."),
        ));
    }
    if has_hidden_characters(name, &[]) {
        return Err(Error::attribute(
            field,
            format!("{field} must not contain control characters or direction overrides."),
        ));
    }
    Ok(name.to_owned())
}

/// The roles one person may give another (by invitation or a role change): known roles, at
/// least one, and never `ACCOUNT_HOLDER`, which belongs to exactly one person and is never
/// handed on.
pub fn grantable_roles<S: AsRef<str>>(catalog: &RoleCatalog, names: &[S]) -> Result<RoleSet> {
    catalog.key_roles(names).map_err(|e| match e {
        Error::Invalid { detail, .. } => Error::attribute(
            "roles",
            detail.replace("cannot be given to a key", "cannot be given to anyone"),
        ),
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn person_validation_table() {
        assert!(Person::validate("ada@example.com", "Ada", "Lovelace").is_ok());
        assert_eq!(
            Person::validate("  ada@example.com ", " Ada ", "L")
                .unwrap()
                .email,
            "ada@example.com"
        );
        for (email, first, last) in [
            ("ada", "Ada", "L"),
            ("@example.com", "Ada", "L"),
            ("ada@", "Ada", "L"),
            ("ada@localhost", "Ada", "L"),
            ("ada@@example.com", "Ada", "L"),
            ("a da@example.com", "Ada", "L"),
            ("ada@example.com", "", "L"),
            ("ada@example.com", "Ada", "  "),
            ("ada@example.com", "A\u{7}", "L"),
            ("ada@example.com", "Ada\u{202E}nimda", "L"),
            ("ada@example.com", "Ada", "\u{2066}L"),
            ("ada\u{200F}@example.com", "Ada", "L"),
            ("ada@example.com", "A\u{200B}da", "L"),
            ("ada@example.com", "Ada", "L\u{FEFF}"),
            ("ada@example.com", "\u{3164}", "L"),
            ("ada@example.com", "Ada\u{E0041}", "L"),
            ("ada@example.com", "A\u{2028}da", "L"),
        ] {
            assert!(
                Person::validate(email, first, last).is_err(),
                "{email} {first} {last}"
            );
        }
        let long = "x".repeat(101);
        assert!(Person::validate("ada@example.com", &long, "L").is_err());
    }

    /// Email length is counted in bytes everywhere: an address of at most 254 characters but
    /// more than 254 bytes is refused at the invitation, not accepted and then unable to sign
    /// in; one of exactly 254 bytes is accepted and fits the sign-in rule.
    #[test]
    fn email_length_is_one_rule_in_bytes() {
        let domain = "@example.com";
        let wide = format!("{}{domain}", "é".repeat(200));
        assert!(wide.chars().count() <= 254 && wide.len() > 254);
        assert!(Person::validate(&wide, "Ada", "L").is_err());
        let exact = format!("{}{domain}", "a".repeat(254 - domain.len()));
        assert_eq!(exact.len(), 254);
        let person = Person::validate(&exact, "Ada", "L").unwrap();
        assert!(email_fits(&person.email));
        assert!(!email_fits(&format!("a{exact}")));
    }

    #[test]
    fn account_holder_is_never_grantable() {
        let cat = RoleCatalog::default();
        assert!(grantable_roles(&cat, &["ADMIN", "DEVELOPER"]).is_ok());
        let err = grantable_roles(&cat, &["ACCOUNT_HOLDER"]).unwrap_err();
        assert!(err.to_string().contains("anyone"), "{err}");
        assert!(grantable_roles::<&str>(&cat, &[]).is_err());
    }
}
