//! A streaming filter over a plain-format pg_dump script, applied between
//! the decompressor and `psql`. By default ([`PlainFilter::new`]) it makes
//! a dump restorable on a scratch server that lacks the source's roles, the
//! way `pg_restore --no-owner --no-privileges` does for archives:
//!
//! - top-level `ALTER ... OWNER TO`, `SET SESSION AUTHORIZATION`, `GRANT`,
//!   `REVOKE` and `ALTER DEFAULT PRIVILEGES` statements are dropped (and
//!   counted, so the result says what was skipped);
//! - roles named in `CREATE POLICY ... TO` that do not exist on the scratch
//!   server are replaced (by `PUBLIC` when none is left), so row-level
//!   security still restores;
//! - `CREATE EXTENSION` of an extension the scratch server does not have is
//!   reported by name instead of as psql's generic error.
//!
//! [`PlainFilter::keeping_owners`] is for a restore an application will
//! use: every statement passes unchanged, and the roles that ownership,
//! privilege and policy statements name are checked against the target, so
//! a missing role is reported by name (all of them, not psql's first error).
//!
//! Only statement starts are looked at. A small lexer follows quotes,
//! dollar quotes and comments so that function bodies, string literals and
//! `COPY` data are never mistaken for statements, and `COPY` data lines are
//! passed through without lexing (they are nearly all of the bytes).

use std::collections::BTreeSet;

/// What the filter removed or changed, for the verification result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterReport {
    pub ownership_statements: u64,
    pub privilege_statements: u64,
    /// `policy: role` pairs whose role was missing and was dropped.
    pub policy_roles: Vec<String>,
    /// Extensions the script creates that the scratch server lacks.
    pub missing_extensions: Vec<String>,
    /// Extensions the script creates.
    pub extensions: Vec<String>,
    /// A custom-format archive restored with `pg_restore --no-owner
    /// --no-privileges`, which does not count what it leaves out.
    pub archive_without_owner_and_privileges: bool,
    /// Keeping owners: roles the script names that the target lacks.
    pub missing_roles: BTreeSet<String>,
}

impl FilterReport {
    /// Human-readable notes of what the restore did not apply.
    pub fn skipped(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.archive_without_owner_and_privileges {
            notes.push(
                "ownership and privileges (pg_restore --no-owner --no-privileges): objects owned by the role that ran the restore".into(),
            );
        }
        if self.ownership_statements > 0 {
            notes.push(format!(
                "{} ownership statement(s) (ALTER ... OWNER TO): objects owned by the role that ran the restore",
                self.ownership_statements
            ));
        }
        if self.privilege_statements > 0 {
            notes.push(format!(
                "{} privilege statement(s) (GRANT/REVOKE/ALTER DEFAULT PRIVILEGES)",
                self.privilege_statements
            ));
        }
        for pair in &self.policy_roles {
            notes.push(format!("policy role missing on the target server: {pair}"));
        }
        notes
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Lex {
    Normal,
    Single { escapes: bool },
    Double,
    Dollar(Vec<u8>),
    Block(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Lines are SQL.
    Sql,
    /// Lines are `COPY ... FROM stdin` data until `\.`.
    CopyData,
    /// Inside a statement being dropped, until its end.
    Skipping,
}

/// See the module documentation. Feed bytes with [`PlainFilter::push`],
/// then call [`PlainFilter::finish`].
#[derive(Debug)]
pub struct PlainFilter {
    roles: BTreeSet<String>,
    available_extensions: BTreeSet<String>,
    line: Vec<u8>,
    lex: Lex,
    mode: Mode,
    /// Whether something other than whitespace and comments was seen since
    /// the last `;`: a line starting then continues a statement.
    pending: bool,
    /// Pass ownership and privilege statements through and check their roles.
    keep_owners: bool,
    report: FilterReport,
}

impl PlainFilter {
    /// `roles`: role names on the scratch server; `extensions`: names from
    /// `pg_available_extensions` there.
    pub fn new(roles: BTreeSet<String>, available_extensions: BTreeSet<String>) -> Self {
        Self {
            roles,
            available_extensions,
            line: Vec::new(),
            lex: Lex::Normal,
            mode: Mode::Sql,
            pending: false,
            keep_owners: false,
            report: FilterReport::default(),
        }
    }

    /// A filter that keeps owners and privileges: nothing is removed or
    /// rewritten; roles named by `OWNER TO`, `GRANT`, `REVOKE`, `ALTER
    /// DEFAULT PRIVILEGES`, `SET SESSION AUTHORIZATION` and `CREATE POLICY`
    /// that are not in `roles` land in [`FilterReport::missing_roles`].
    pub fn keeping_owners(roles: BTreeSet<String>, available_extensions: BTreeSet<String>) -> Self {
        Self {
            keep_owners: true,
            ..Self::new(roles, available_extensions)
        }
    }

    /// Whether the input so far ends between statements (no open quote,
    /// comment or statement).
    pub fn at_statement_boundary(&self) -> bool {
        !self.pending && self.lex == Lex::Normal && self.mode != Mode::CopyData
    }

    pub fn report(&self) -> &FilterReport {
        &self.report
    }

    /// Appends what passes the filter from `input` to `out`.
    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            match input.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    let (head, rest) = input.split_at(end + 1);
                    input = rest;
                    if self.line.is_empty() {
                        self.line_done(head, out);
                    } else {
                        let mut line = std::mem::take(&mut self.line);
                        line.extend_from_slice(head);
                        self.line_done(&line, out);
                        line.clear();
                        self.line = line;
                    }
                }
                None => {
                    self.line.extend_from_slice(input);
                    input = &[];
                }
            }
        }
    }

    /// Flushes a last line without a newline.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, out);
        }
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<u8>) {
        match self.mode {
            Mode::CopyData => {
                if trim_end(line) == b"\\." {
                    self.mode = Mode::Sql;
                }
                out.extend_from_slice(line);
            }
            Mode::Skipping => {
                self.lex_line(line);
                if !self.pending && self.lex == Lex::Normal {
                    self.mode = Mode::Sql;
                }
            }
            Mode::Sql => {
                let at_statement_start = !self.pending && self.lex == Lex::Normal;
                // psql meta-commands (`\restrict KEY` in recent dumps) end
                // at the end of their line, without `;`.
                if at_statement_start && line.starts_with(b"\\") {
                    out.extend_from_slice(line);
                    return;
                }
                if at_statement_start
                    && self.keep_owners
                    && let Statement::Ownership | Statement::Privilege | Statement::Policy =
                        classify(line)
                {
                    for role in referenced_roles(line) {
                        if !self.roles.contains(&role) {
                            self.report.missing_roles.insert(role);
                        }
                    }
                }
                if at_statement_start {
                    match classify(line) {
                        Statement::Ownership | Statement::Privilege | Statement::Policy
                            if self.keep_owners => {}
                        Statement::Ownership | Statement::Privilege => {
                            if classify(line) == Statement::Ownership {
                                self.report.ownership_statements += 1;
                            } else {
                                self.report.privilege_statements += 1;
                            }
                            self.lex_line(line);
                            if self.pending || self.lex != Lex::Normal {
                                self.mode = Mode::Skipping;
                            }
                            return;
                        }
                        Statement::Policy => {
                            let rewritten = self.rewrite_policy(line);
                            self.lex_line(&rewritten);
                            out.extend_from_slice(&rewritten);
                            return;
                        }
                        Statement::Extension => {
                            if let Some(name) = extension_name(line) {
                                if !self.available_extensions.contains(&name) {
                                    self.report.missing_extensions.push(name.clone());
                                }
                                self.report.extensions.push(name);
                            }
                        }
                        Statement::Copy => {
                            self.lex_line(line);
                            self.mode = Mode::CopyData;
                            out.extend_from_slice(line);
                            return;
                        }
                        Statement::Other => {}
                    }
                }
                self.lex_line(line);
                out.extend_from_slice(line);
            }
        }
    }

    /// Follows quoting state across one line and notes whether it leaves
    /// a statement open.
    fn lex_line(&mut self, line: &[u8]) {
        let mut i = 0;
        while i < line.len() {
            let b = line[i];
            match &mut self.lex {
                Lex::Normal => match b {
                    b'-' if line.get(i + 1) == Some(&b'-') => break,
                    b'/' if line.get(i + 1) == Some(&b'*') => {
                        self.lex = Lex::Block(1);
                        i += 1;
                    }
                    b'\'' => {
                        let escapes = i > 0
                            && matches!(line[i - 1], b'E' | b'e')
                            && (i < 2 || !is_ident_byte(line[i - 2]));
                        self.lex = Lex::Single { escapes };
                        self.pending = true;
                    }
                    b'"' => {
                        self.lex = Lex::Double;
                        self.pending = true;
                    }
                    b'$' if i == 0 || !is_ident_byte(line[i - 1]) => {
                        if let Some(len) = dollar_tag(&line[i..]) {
                            self.lex = Lex::Dollar(line[i..i + len].to_vec());
                            i += len - 1;
                        }
                        self.pending = true;
                    }
                    b';' => self.pending = false,
                    b' ' | b'\t' | b'\r' | b'\n' => {}
                    _ => self.pending = true,
                },
                Lex::Single { escapes } => match b {
                    b'\\' if *escapes => i += 1,
                    b'\'' => {
                        if line.get(i + 1) == Some(&b'\'') {
                            i += 1;
                        } else {
                            self.lex = Lex::Normal;
                        }
                    }
                    _ => {}
                },
                Lex::Double => {
                    if b == b'"' {
                        if line.get(i + 1) == Some(&b'"') {
                            i += 1;
                        } else {
                            self.lex = Lex::Normal;
                        }
                    }
                }
                Lex::Dollar(tag) => {
                    if b == b'$' && line[i..].starts_with(tag) {
                        i += tag.len() - 1;
                        self.lex = Lex::Normal;
                    }
                }
                Lex::Block(depth) => {
                    if b == b'*' && line.get(i + 1) == Some(&b'/') {
                        *depth -= 1;
                        i += 1;
                        if *depth == 0 {
                            self.lex = Lex::Normal;
                        }
                    } else if b == b'/' && line.get(i + 1) == Some(&b'*') {
                        *depth += 1;
                        i += 1;
                    }
                }
            }
            i += 1;
        }
    }

    /// `CREATE POLICY p ON t [AS ..] [FOR ..] TO r1, r2 USING (...)`: as
    /// pg_dump writes it, on one line with the roles quoted by quote_ident.
    fn rewrite_policy(&mut self, line: &[u8]) -> Vec<u8> {
        let Ok(text) = std::str::from_utf8(line) else {
            return line.to_vec();
        };
        let tokens = tokenize_head(text);
        let Some(to) = tokens
            .iter()
            .position(|t| t.text.eq_ignore_ascii_case("TO"))
        else {
            return line.to_vec();
        };
        let policy = tokens.get(2).map(|t| unquote(&t.text)).unwrap_or_default();
        let mut kept = Vec::new();
        let mut end = tokens[to].end;
        let mut changed = false;
        let mut index = to + 1;
        while let Some(token) = tokens.get(index) {
            let name = unquote(&token.text);
            let is_special = ["PUBLIC", "CURRENT_USER", "CURRENT_ROLE", "SESSION_USER"]
                .iter()
                .any(|k| token.text.eq_ignore_ascii_case(k));
            if is_special || self.roles.contains(&name) {
                kept.push(token.text.clone());
            } else {
                self.report.policy_roles.push(format!("{policy}: {name}"));
                changed = true;
            }
            end = token.end;
            match tokens.get(index + 1) {
                Some(comma) if comma.text == "," => index += 2,
                _ => break,
            }
        }
        if !changed {
            return line.to_vec();
        }
        if kept.is_empty() {
            kept.push("PUBLIC".into());
        }
        format!(
            "{}TO {}{}",
            &text[..tokens[to].end - 2],
            kept.join(", "),
            &text[end..]
        )
        .into_bytes()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Statement {
    Ownership,
    Privilege,
    Policy,
    Extension,
    Copy,
    Other,
}

fn classify(line: &[u8]) -> Statement {
    let starts = |prefix: &str| {
        line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    };
    if starts("ALTER DEFAULT PRIVILEGES ") || starts("GRANT ") || starts("REVOKE ") {
        Statement::Privilege
    } else if (starts("ALTER ") && contains(line, b" OWNER TO "))
        || starts("SET SESSION AUTHORIZATION ")
        || starts("RESET SESSION AUTHORIZATION")
    {
        Statement::Ownership
    } else if starts("CREATE POLICY ") {
        Statement::Policy
    } else if starts("CREATE EXTENSION ") {
        Statement::Extension
    } else if starts("COPY ") && trim_end(line).ends_with(b"FROM stdin;") {
        Statement::Copy
    } else {
        Statement::Other
    }
}

/// Role names an ownership, privilege or policy statement (one line, as
/// pg_dump writes it) refers to; `PUBLIC` and `CURRENT_USER`-like words
/// are not roles.
fn referenced_roles(line: &[u8]) -> Vec<String> {
    let Ok(text) = std::str::from_utf8(line) else {
        return Vec::new();
    };
    let upper = text.to_ascii_uppercase();
    let mut roles = Vec::new();
    let list_after = |at: Option<usize>| at.map(|at| role_list(&text[at..])).unwrap_or_default();
    let after = |keyword: &str| upper.rfind(keyword).map(|i| i + keyword.len());
    if let Some(name) = text.get("SET SESSION AUTHORIZATION ".len()..)
        && upper.starts_with("SET SESSION AUTHORIZATION ")
    {
        let name = name.trim().trim_end_matches(';').trim();
        if let Some(inner) = name.strip_prefix('\'').and_then(|n| n.strip_suffix('\'')) {
            roles.push(inner.replace("''", "'"));
        } else if !name.eq_ignore_ascii_case("DEFAULT") {
            roles.push(unquote(name));
        }
    } else if upper.starts_with("ALTER DEFAULT PRIVILEGES ") {
        roles.extend(list_after(
            after(" FOR ROLE ").or_else(|| after(" FOR USER ")),
        ));
        roles.extend(list_after(if upper.contains(" REVOKE ") {
            after(" FROM ")
        } else {
            after(" TO ")
        }));
    } else if upper.starts_with("REVOKE ") {
        roles.extend(list_after(after(" FROM ")));
    } else if upper.starts_with("GRANT ") || upper.starts_with("CREATE POLICY ") {
        roles.extend(list_after(after(" TO ")));
    } else if !upper.starts_with("RESET ") {
        roles.extend(list_after(after(" OWNER TO ")));
    }
    roles
}

/// `name[, name]...` at the start of `text` (after `TO`, `FROM`, `FOR ROLE`).
fn role_list(text: &str) -> Vec<String> {
    let tokens = tokenize_head(text);
    let mut roles = Vec::new();
    let mut index = usize::from(
        tokens
            .first()
            .is_some_and(|t| t.text.eq_ignore_ascii_case("GROUP")),
    );
    while let Some(token) = tokens.get(index) {
        let special = [
            "PUBLIC",
            "CURRENT_USER",
            "CURRENT_ROLE",
            "SESSION_USER",
            "DEFAULT",
        ]
        .iter()
        .any(|k| token.text.eq_ignore_ascii_case(k));
        if !special {
            roles.push(unquote(&token.text));
        }
        match tokens.get(index + 1) {
            Some(comma) if comma.text == "," => index += 2,
            _ => break,
        }
    }
    roles
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn trim_end(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b'\n' | b'\r' | b' ' | b'\t') {
        end -= 1;
    }
    &line[..end]
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// Length of a dollar-quote opener (`$$`, `$tag$`) at the start of `s`.
fn dollar_tag(s: &[u8]) -> Option<usize> {
    let mut i = 1;
    while i < s.len() && s[i] != b'$' {
        let b = s[i];
        let ok = if i == 1 {
            b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
        } else {
            is_ident_byte(b)
        };
        if !ok {
            return None;
        }
        i += 1;
    }
    (i < s.len()).then_some(i + 1)
}

fn extension_name(line: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(line).ok()?;
    let tokens = tokenize_head(text);
    let mut index = 2;
    if tokens
        .get(2)
        .is_some_and(|t| t.text.eq_ignore_ascii_case("IF"))
    {
        index = 5;
    }
    tokens.get(index).map(|t| unquote(&t.text))
}

#[derive(Debug)]
struct Token {
    text: String,
    /// Byte offset just past the token.
    end: usize,
}

/// Words, quoted identifiers and commas, up to the first `(` or `;`:
/// enough for the heads of `CREATE POLICY` and `CREATE EXTENSION`.
fn tokenize_head(text: &str) -> Vec<Token> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'(' | b';' => break,
            b',' => {
                tokens.push(Token {
                    text: ",".into(),
                    end: i + 1,
                });
                i += 1;
            }
            b'"' => {
                let start = i;
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == b'"' {
                        if bytes.get(i + 1) == Some(&b'"') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i = (i + 1).min(bytes.len());
                tokens.push(Token {
                    text: text[start..i].to_owned(),
                    end: i,
                });
            }
            _ => {
                let start = i;
                while i < bytes.len()
                    && !matches!(
                        bytes[i],
                        b' ' | b'\t' | b'\r' | b'\n' | b',' | b'(' | b';' | b'"'
                    )
                {
                    i += 1;
                }
                tokens.push(Token {
                    text: text[start..i].to_owned(),
                    end: i,
                });
            }
        }
    }
    tokens
}

/// The name an identifier token stands for (quotes removed; unquoted
/// names fold to lower case as PostgreSQL does).
fn unquote(token: &str) -> String {
    match token.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => token.to_lowercase(),
    }
}

/// Splits an operator check file into statements (on `;` outside quotes
/// and comments). Each comes with a name: the text of the last `--`
/// comment line before it, or its own first line.
pub fn split_checks(sql: &str) -> Vec<(String, String)> {
    let mut filter = PlainFilter::new(BTreeSet::new(), BTreeSet::new());
    let mut checks = Vec::new();
    let mut current = String::new();
    let mut name: Option<String> = None;
    for line in sql.split_inclusive('\n') {
        let trimmed = line.trim();
        if current.trim().is_empty()
            && filter.lex == Lex::Normal
            && let Some(comment) = trimmed.strip_prefix("--")
        {
            let comment = comment.trim();
            if !comment.is_empty() {
                name = Some(comment.to_owned());
            }
            continue;
        }
        filter.lex_line(line.as_bytes());
        current.push_str(line);
        if !filter.pending && filter.lex == Lex::Normal && !current.trim().is_empty() {
            let statement = current.trim().trim_end_matches(';').trim().to_owned();
            let label = name
                .take()
                .unwrap_or_else(|| statement.lines().next().unwrap_or_default().to_owned());
            checks.push((label, statement));
            current.clear();
        }
    }
    let rest = current.trim().trim_end_matches(';').trim();
    if !rest.is_empty() {
        let label = name.unwrap_or_else(|| rest.lines().next().unwrap_or_default().to_owned());
        checks.push((label, rest.to_owned()));
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(script: &str, roles: &[&str], extensions: &[&str]) -> (String, FilterReport) {
        let mut filter = PlainFilter::new(
            roles.iter().map(|r| r.to_string()).collect(),
            extensions.iter().map(|r| r.to_string()).collect(),
        );
        let mut out = Vec::new();
        // Awkward chunk boundaries on purpose.
        for chunk in script.as_bytes().chunks(7) {
            filter.push(chunk, &mut out);
        }
        filter.finish(&mut out);
        (String::from_utf8(out).unwrap(), filter.report().clone())
    }

    #[test]
    fn ownership_and_privileges_are_dropped_and_counted() {
        let script = "CREATE TABLE public.t (id int);\n\
            ALTER TABLE public.t OWNER TO alice;\n\
            GRANT SELECT ON TABLE public.t TO bob;\n\
            REVOKE ALL ON SCHEMA public FROM PUBLIC;\n\
            ALTER DEFAULT PRIVILEGES FOR ROLE alice IN SCHEMA public GRANT SELECT ON TABLES TO bob;\n\
            SELECT 1;\n";
        let (out, report) = run(script, &[], &[]);
        assert_eq!(out, "CREATE TABLE public.t (id int);\nSELECT 1;\n");
        assert_eq!(report.ownership_statements, 1);
        assert_eq!(report.privilege_statements, 3);
    }

    #[test]
    fn keeping_owners_passes_everything_and_names_every_missing_role() {
        let script = "CREATE TABLE public.t (id int);\n\
            ALTER TABLE public.t OWNER TO alice;\n\
            ALTER FUNCTION public.f(integer) OWNER TO \"Odd Owner\";\n\
            GRANT SELECT ON TABLE public.t TO bob, \"Mixed\" WITH GRANT OPTION;\n\
            GRANT SELECT(id) ON TABLE public.t TO carol;\n\
            REVOKE ALL ON SCHEMA public FROM PUBLIC;\n\
            REVOKE ALL ON TABLE public.t FROM dave;\n\
            ALTER DEFAULT PRIVILEGES FOR ROLE erin IN SCHEMA public GRANT SELECT ON TABLES TO frank;\n\
            SET SESSION AUTHORIZATION 'gina';\n\
            RESET SESSION AUTHORIZATION;\n\
            CREATE POLICY p ON public.t TO alice, hank USING (true);\n\
            SELECT 1;\n";
        let mut filter = PlainFilter::keeping_owners(
            ["alice", "bob"].iter().map(|r| r.to_string()).collect(),
            BTreeSet::new(),
        );
        let mut out = Vec::new();
        for chunk in script.as_bytes().chunks(5) {
            filter.push(chunk, &mut out);
        }
        filter.finish(&mut out);
        assert_eq!(String::from_utf8(out).unwrap(), script);
        let report = filter.report();
        assert_eq!(
            report
                .missing_roles
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            [
                "Mixed",
                "Odd Owner",
                "carol",
                "dave",
                "erin",
                "frank",
                "gina",
                "hank"
            ]
        );
        assert_eq!(report.ownership_statements, 0);
        assert!(report.skipped().is_empty());
    }

    #[test]
    fn function_bodies_strings_and_copy_data_are_left_alone() {
        let script = "CREATE FUNCTION f() RETURNS void AS $_$\n\
            BEGIN\n\
            GRANT SELECT ON t TO x;\n\
            END $_$ LANGUAGE plpgsql;\n\
            COMMENT ON TABLE t IS 'it''s\n\
            GRANT nothing;';\n\
            COPY public.t (line) FROM stdin;\n\
            GRANT SELECT ON t TO x;\n\
            ALTER TABLE t OWNER TO y;\n\
            \\.\n\
            GRANT SELECT ON t TO x;\n";
        let (out, report) = run(script, &[], &[]);
        let expected = script.strip_suffix("GRANT SELECT ON t TO x;\n").unwrap();
        assert_eq!(out, expected);
        assert_eq!(report.privilege_statements, 1);
        assert_eq!(report.ownership_statements, 0);
    }

    #[test]
    fn meta_commands_do_not_open_a_statement() {
        let script = "\\restrict abc\nGRANT x TO y;\n\\unrestrict abc\n";
        let mut filter = PlainFilter::new(BTreeSet::new(), BTreeSet::new());
        let mut out = Vec::new();
        filter.push(script.as_bytes(), &mut out);
        filter.finish(&mut out);
        assert_eq!(out, b"\\restrict abc\n\\unrestrict abc\n");
        assert_eq!(filter.report().privilege_statements, 1);
        assert!(filter.at_statement_boundary());
    }

    #[test]
    fn missing_policy_roles_are_replaced() {
        let script = "CREATE POLICY \"own rows\" ON public.t TO app, \"Ghost Role\" USING ((owner = CURRENT_USER));\n\
            CREATE POLICY p2 ON public.t FOR SELECT TO ghost USING (true);\n";
        let (out, report) = run(script, &["app"], &[]);
        assert_eq!(
            out,
            "CREATE POLICY \"own rows\" ON public.t TO app USING ((owner = CURRENT_USER));\n\
             CREATE POLICY p2 ON public.t FOR SELECT TO PUBLIC USING (true);\n"
        );
        assert_eq!(report.policy_roles.len(), 2);
    }

    #[test]
    fn extensions_are_checked_against_the_server() {
        let script = "CREATE EXTENSION IF NOT EXISTS \"uuid-ossp\" WITH SCHEMA public;\n\
                      CREATE EXTENSION IF NOT EXISTS postgis WITH SCHEMA public;\n";
        let (_, report) = run(script, &[], &["uuid-ossp"]);
        assert_eq!(report.extensions, ["uuid-ossp", "postgis"]);
        assert_eq!(report.missing_extensions, ["postgis"]);
    }

    #[test]
    fn check_files_split_into_named_statements() {
        let checks = split_checks(
            "-- every copy has an exam\nSELECT NOT EXISTS (SELECT 1 FROM c WHERE e IS NULL);\n\n\
             SELECT ';' <> 'x'\n  AND true;\n",
        );
        assert_eq!(checks.len(), 2);
        assert_eq!(checks[0].0, "every copy has an exam");
        assert_eq!(checks[1].0, "SELECT ';' <> 'x'");
        assert!(checks[1].1.ends_with("AND true"));
    }
}
