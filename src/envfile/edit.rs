//! A dotenv file as its lines: assignments are found (with python-dotenv's and dotenvy's
//! syntax: `export`, single and double quotes, values over several lines, `#` comments) and
//! one value can be replaced without touching a byte around it.

/// How a value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    None,
    Single,
    Double,
}

/// One `KEY=value` assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// The value as a dotenv reader gets it.
    pub value: String,
    /// 1-based line number of the assignment.
    pub line: usize,
    quote: Quote,
    /// Byte range of the written value (quotes included) in the file.
    span: (usize, usize),
}

/// A parsed dotenv file; [`EnvFile::render`] gives back the original bytes plus the edits.
#[derive(Debug, Clone)]
pub struct EnvFile {
    text: String,
    entries: Vec<Entry>,
    newline: &'static str,
}

/// Where [`EnvFile::set`] put a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// An existing assignment on this line was changed; `earlier` lists lines that also assign
    /// the key (dotenv readers use the last one, which is the one changed).
    Updated {
        /// The line changed.
        line: usize,
        /// Other lines assigning the same key, left as they are.
        earlier: Vec<usize>,
    },
    /// A new line was added at the end.
    Appended {
        /// Its line number.
        line: usize,
    },
}

impl EnvFile {
    /// Parses `text` (lines that are not assignments are kept, never judged).
    pub fn parse(text: &str) -> EnvFile {
        let newline = match text.find('\n') {
            Some(at) if text[..at].ends_with('\r') => "\r\n",
            _ => "\n",
        };
        let mut entries = Vec::new();
        let mut at = 0;
        let mut line = 1;
        while at < text.len() {
            let end = text[at..].find('\n').map_or(text.len(), |n| at + n + 1);
            let next = match assignment(text, at, end) {
                Some((value_end, mut entry)) => {
                    entry.line = line;
                    entries.push(entry);
                    // A quoted value may run over several lines: go on after the line it ends on.
                    text[value_end..].find('\n').map_or(text.len(), |n| value_end + n + 1)
                }
                None => end,
            };
            line += text[at..next].matches('\n').count();
            at = next;
        }
        EnvFile { text: text.to_owned(), entries, newline }
    }

    /// Every assignment, in file order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The assignment a dotenv reader uses for `key`: the last one.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().rev().find(|e| e.key == key)
    }

    /// Sets `key` to `value`: the last assignment of the key is changed in place (keeping its
    /// quoting, `export`, comment and line ending), else a line is appended.
    pub fn set(&mut self, key: &str, value: &str) -> Placement {
        let lines: Vec<usize> = self.entries.iter().filter(|e| e.key == key).map(|e| e.line).collect();
        let updated = match self.get(key).cloned() {
            Some(entry) => {
                let written = match entry.quote {
                    Quote::Single if !value.contains('\'') => format!("'{value}'"),
                    Quote::Double | Quote::Single => double_quoted(value),
                    Quote::None => written_value(value),
                };
                let (start, end) = entry.span;
                self.text.replace_range(start..end, &written);
                Some(entry.line)
            }
            None => {
                let ends_open = !self.text.is_empty() && !self.text.ends_with('\n');
                if ends_open {
                    self.text.push_str(self.newline);
                }
                self.text.push_str(&format!("{key}={}", written_value(value)));
                if !ends_open {
                    self.text.push_str(self.newline);
                }
                None
            }
        };
        self.entries = EnvFile::parse(&self.text).entries;
        match updated {
            Some(line) => Placement::Updated { line, earlier: lines.into_iter().filter(|l| *l != line).collect() },
            // The appended line is the last assignment of the key.
            None => Placement::Appended { line: self.get(key).map_or(0, |e| e.line) },
        }
    }

    /// The file's text with the edits.
    pub fn render(&self) -> &str {
        &self.text
    }
}

/// `value` as written on a new line: bare when it is plainly safe, else double-quoted.
fn written_value(value: &str) -> String {
    let safe = !value.is_empty() && value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:/@%+=~,?&[]".contains(c));
    if safe { value.to_owned() } else { double_quoted(value) }
}

fn double_quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The assignment starting on the line `text[start..end]`, if it is one: where it ends (the
/// end of its value, before any comment and line ending) and the entry.
fn assignment(text: &str, start: usize, end: usize) -> Option<(usize, Entry)> {
    let line = &text[start..end];
    let mut rest = line.trim_start_matches([' ', '\t']);
    if let Some(after) = rest.strip_prefix("export") {
        if after.starts_with([' ', '\t']) {
            rest = after.trim_start_matches([' ', '\t']);
        }
    }
    let key_len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-'))?;
    if key_len == 0 {
        return None;
    }
    let key = &rest[..key_len];
    let after_key = rest[key_len..].trim_start_matches([' ', '\t']);
    let after_eq = after_key.strip_prefix('=')?;
    let value_text = after_eq.trim_start_matches([' ', '\t']);
    let value_start = start + line.len() - value_text.len();
    let from_value = &text[value_start..];
    let (quote, value, value_len) = match from_value.chars().next() {
        Some('\'') => {
            let close = from_value[1..].find('\'')?;
            (Quote::Single, from_value[1..=close].to_owned(), close + 2)
        }
        Some('"') => {
            let (value, len) = double_quoted_value(from_value)?;
            (Quote::Double, value, len)
        }
        _ => {
            let line_rest = &text[value_start..end];
            let line_rest = line_rest.trim_end_matches(['\n', '\r']);
            let bare = match line_rest.find(" #").or_else(|| line_rest.find("\t#")) {
                Some(at) => &line_rest[..at],
                None => line_rest,
            };
            let bare = bare.trim_end_matches([' ', '\t']);
            (Quote::None, bare.to_owned(), bare.len())
        }
    };
    let value_end = value_start + value_len;
    let entry = Entry { key: key.to_owned(), value, line: 0, quote, span: (value_start, value_end) };
    Some((value_end, entry))
}

/// A double-quoted value at the start of `text` (its escapes decoded) and its written length.
fn double_quoted_value(text: &str) -> Option<(String, usize)> {
    let mut value = String::new();
    let mut chars = text.char_indices().skip(1);
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Some((value, at + 1)),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                'r' => value.push('\r'),
                't' => value.push('\t'),
                other @ ('"' | '\\' | '\'' | '$') => value.push(other),
                other => {
                    value.push('\\');
                    value.push(other);
                }
            },
            c => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// What dotenvy (the reader doctor uses, agreeing with python-dotenv here) gets for `key`:
    /// the last assignment, as python-dotenv's dict keeps.
    fn dotenvy_value(text: &str, key: &str) -> Option<String> {
        dotenvy::from_read_iter(text.as_bytes()).map(Result::unwrap).filter(|(k, _)| k == key).map(|(_, v)| v).last()
    }

    /// (file, key, expected value read, file after setting `key` to `cg_NEW`).
    const SHAPES: &[(&str, &str, Option<&str>, &str)] = &[
        ("", "K", None, "K=cg_NEW\n"),
        ("A=1\n", "K", None, "A=1\nK=cg_NEW\n"),
        ("A=1", "K", None, "A=1\nK=cg_NEW"),
        ("A=1\r\nB=2\r\n", "K", None, "A=1\r\nB=2\r\nK=cg_NEW\r\n"),
        ("K=old\r\nB=2\r\n", "K", Some("old"), "K=cg_NEW\r\nB=2\r\n"),
        ("# c\n\nK=old\n# after\n", "K", Some("old"), "# c\n\nK=cg_NEW\n# after\n"),
        ("export K=old\n", "K", Some("old"), "export K=cg_NEW\n"),
        ("K = old  # the token\n", "K", Some("old"), "K = cg_NEW  # the token\n"),
        ("K='old'\n", "K", Some("old"), "K='cg_NEW'\n"),
        ("K=\"old\" # c\n", "K", Some("old"), "K=\"cg_NEW\" # c\n"),
        ("K=\n", "K", Some(""), "K=cg_NEW\n"),
        ("K=old", "K", Some("old"), "K=cg_NEW"),
        ("K=first\nA=1\nK=second\n", "K", Some("second"), "K=first\nA=1\nK=cg_NEW\n"),
        ("M=\"a\nb\"\nK=old\n", "K", Some("old"), "M=\"a\nb\"\nK=cg_NEW\n"),
        ("KEY=old\nK2=x\n", "K", None, "KEY=old\nK2=x\nK=cg_NEW\n"),
        ("#K=old\n", "K", None, "#K=old\nK=cg_NEW\n"),
    ];

    #[test]
    fn only_the_value_changes_in_every_file_shape() {
        for (text, key, value, after) in SHAPES {
            let mut file = EnvFile::parse(text);
            assert_eq!(file.get(key).map(|e| e.value.as_str()), *value, "read {text:?}");
            assert_eq!(file.get(key).map(|e| e.value.clone()), dotenvy_value(text, key), "dotenvy on {text:?}");
            file.set(key, "cg_NEW");
            assert_eq!(file.render(), *after, "edit of {text:?}");
            assert_eq!(dotenvy_value(file.render(), key).as_deref(), Some("cg_NEW"), "read back {text:?}");
        }
    }

    #[test]
    fn placement_names_the_line_and_duplicates() {
        let mut file = EnvFile::parse("K=a\nA=1\nK=b\n");
        assert_eq!(file.set("K", "x"), Placement::Updated { line: 3, earlier: vec![1] });
        assert_eq!(file.set("U", "http://h:1"), Placement::Appended { line: 4 });
        assert_eq!(file.render(), "K=a\nA=1\nK=x\nU=http://h:1\n");
        let multi = EnvFile::parse("M=\"a\nb\nc\"\nK=v\n");
        assert_eq!(multi.get("K").map(|e| e.line), Some(4));
        assert_eq!(multi.get("M").map(|e| e.value.as_str()), Some("a\nb\nc"));
    }

    #[test]
    fn unsafe_values_are_quoted() {
        let mut file = EnvFile::parse("");
        file.set("K", "a b\"c");
        assert_eq!(file.render(), "K=\"a b\\\"c\"\n");
        assert_eq!(dotenvy_value(file.render(), "K").as_deref(), Some("a b\"c"));
    }

    /// A ComfyUI-Login value is a bcrypt hash full of `$`: read whole, as python-dotenv reads it
    /// (no `$VAR` expansion), quoted or not — `doctor --env-file` reads with this too.
    #[test]
    fn dollar_signs_are_not_expanded() {
        let hash = "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW";
        for text in [
            format!("COMFYUI_TOKEN={hash}\n"),
            format!("COMFYUI_TOKEN='{hash}'\n"),
            format!("COMFYUI_TOKEN=\"{hash}\"\n"),
        ] {
            assert_eq!(EnvFile::parse(&text).get("COMFYUI_TOKEN").map(|e| e.value.as_str()), Some(hash), "{text}");
        }
    }
}
