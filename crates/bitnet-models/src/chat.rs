//! Chat templates: the Jinja text of `tokenizer_config.json` (or
//! `tokenizer.chat_template` in GGUF) rendered with `minijinja` the way
//! `transformers`' `apply_chat_template` renders it with Jinja2.
//!
//! Matching HF's environment: `trim_blocks` and `lstrip_blocks` on, one
//! trailing newline of the template dropped, loop controls (`break`,
//! `continue`), Python string methods (`.strip()`, `.startswith()`, ... via
//! `minijinja-contrib`'s pycompat), `raise_exception(msg)` failing the
//! render with `msg`, `strftime_now(fmt)` (UTC here; HF uses local time),
//! and `tojson` formatting like Python's `json.dumps` (`", "` and `": "`
//! separators, non-ASCII kept, optional `indent`). Variables are
//! `messages` (each `{role, content}`), `add_generation_prompt`,
//! `bos_token` and `eos_token`.
//!
//! The rendered text holds special tokens as text (`<|begin_of_text|>`):
//! encode it with `add_special_tokens = false` when the template writes the
//! BOS itself, as most do.

use crate::error::{Error, Result};
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, ErrorKind, context};
use std::path::{Path, PathBuf};

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// The turn's text.
    pub content: String,
}

impl ChatMessage {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The built-in template, used when a model has none: Llama-3's format
/// (`<|begin_of_text|>`, then per message a header with the role, two
/// newlines, the content and `<|eot_id|>`).
pub const LLAMA3_TEMPLATE: &str = "<|begin_of_text|>{% for message in messages %}\
<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] }}<|eot_id|>\
{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}";

const TEMPLATE_NAME: &str = "chat";

/// A compiled chat template.
pub struct ChatTemplate {
    source: PathBuf,
    text: String,
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("text", &self.text)
            .finish()
    }
}

fn describe(e: &minijinja::Error) -> String {
    let mut msg = match (e.kind(), e.detail()) {
        (ErrorKind::InvalidOperation, Some(d)) => d.to_string(),
        _ => e.to_string(),
    };
    if let Some(line) = e.line()
        && !msg.contains("line")
    {
        msg.push_str(&format!(" (line {line})"));
    }
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        msg.push_str(&format!(": {c}"));
        cause = c.source();
    }
    msg
}

impl ChatTemplate {
    /// Compiles `text`; errors name `source` (the file it came from).
    pub fn new(text: &str, source: impl AsRef<Path>) -> Result<ChatTemplate> {
        let source = source.as_ref().to_path_buf();
        let mut env = Environment::new();
        let syntax = env
            .syntax()
            .to_builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| Error::ChatTemplate {
                path: source.clone(),
                message: describe(&e),
            })?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, text.to_owned())
            .map_err(|e| Error::ChatTemplate {
                path: source.clone(),
                message: describe(&e),
            })?;
        Ok(ChatTemplate {
            source,
            text: text.to_owned(),
            env,
        })
    }

    /// The built-in Llama-3 template ([`LLAMA3_TEMPLATE`]).
    pub fn llama3() -> ChatTemplate {
        match ChatTemplate::new(LLAMA3_TEMPLATE, "<built-in llama-3>") {
            Ok(t) => t,
            // The constant compiles (tested); keep the signature infallible.
            Err(e) => unreachable!("built-in template: {e}"),
        }
    }

    /// The template's text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Renders the conversation; `add_generation_prompt` appends the
    /// opening of an assistant turn.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| context! { role => m.role.as_str(), content => m.content.as_str() })
            .collect();
        let ctx = context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => bos_token,
            eos_token => eos_token,
        };
        let err = |e: minijinja::Error| Error::ChatTemplate {
            path: self.source.clone(),
            message: describe(&e),
        };
        self.env
            .get_template(TEMPLATE_NAME)
            .map_err(err)?
            .render(ctx)
            .map_err(err)
    }
}

/// HF's `raise_exception(msg)`: fails the render with `msg`.
fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

/// HF's `strftime_now(fmt)`, in UTC.
fn strftime_now(fmt: String) -> std::result::Result<Value, minijinja::Error> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    strftime(&fmt, secs).map(Value::from)
}

/// Formats Unix time `secs` (UTC) with the common `strftime` codes.
fn strftime(fmt: &str, secs: u64) -> std::result::Result<String, minijinja::Error> {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, mi, s) = (rem / 3600, rem / 60 % 60, rem % 60);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday.
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let cumulative = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cumulative[(m - 1) as usize] + d + i64::from(leap && m > 2);
    let month = MONTHS[(m - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(code) = chars.next() else {
            out.push('%');
            break;
        };
        let piece = match code {
            'Y' => y.to_string(),
            'y' => format!("{:02}", y % 100),
            'm' => format!("{m:02}"),
            'd' => format!("{d:02}"),
            'e' => format!("{d:>2}"),
            'B' => month.to_owned(),
            'b' | 'h' => month[..3].to_owned(),
            'A' => DAYS[weekday].to_owned(),
            'a' => DAYS[weekday][..3].to_owned(),
            'H' => format!("{h:02}"),
            'I' => format!("{:02}", (h + 11) % 12 + 1),
            'p' => if h < 12 { "AM" } else { "PM" }.to_owned(),
            'M' => format!("{mi:02}"),
            'S' => format!("{s:02}"),
            'j' => format!("{yday:03}"),
            'F' => format!("{y}-{m:02}-{d:02}"),
            'T' => format!("{h:02}:{mi:02}:{s:02}"),
            '%' => "%".to_owned(),
            other => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("strftime_now: unsupported format code %{other}"),
                ));
            }
        };
        out.push_str(&piece);
    }
    Ok(out)
}

/// HF's `tojson`: Python `json.dumps(x, ensure_ascii=False, indent=indent)`.
fn tojson(
    value: &Value,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = match indent.or(kwargs.get::<Option<Value>>("indent")?) {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => Some(usize::try_from(v).map_err(|_| {
            minijinja::Error::new(ErrorKind::InvalidOperation, "tojson: indent is not a count")
        })?),
    };
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&mut out, value, indent, 0)?;
    Ok(Value::from_safe_string(out))
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_json(
    out: &mut String,
    v: &Value,
    indent: Option<usize>,
    depth: usize,
) -> std::result::Result<(), minijinja::Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&v.to_string()),
        ValueKind::String | ValueKind::Bytes | ValueKind::Plain | ValueKind::Invalid => {
            json_string(out, &v.to_string())
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                write_json(out, item, indent, depth + 1)?;
            }
            if !items.is_empty() {
                newline(out, depth);
            }
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<Value> = v.try_iter()?.collect();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                json_string(out, &k.to_string());
                out.push_str(": ");
                write_json(out, &v.get_item(k)?, indent, depth + 1)?;
            }
            if !keys.is_empty() {
                newline(out, depth);
            }
            out.push('}');
        }
        _ => json_string(out, &v.to_string()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs() -> Vec<ChatMessage> {
        vec![
            ChatMessage::new("system", "You are terse."),
            ChatMessage::new("user", "Hi!"),
            ChatMessage::new("assistant", "Hello."),
        ]
    }

    #[test]
    fn builtin_llama3_format() {
        let t = ChatTemplate::llama3();
        let out = t.render(&msgs()[1..2], true, "<s>", "</s>").unwrap();
        assert_eq!(
            out,
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        let no_prompt = t.render(&msgs()[1..2], false, "<s>", "</s>").unwrap();
        assert!(no_prompt.ends_with("Hi!<|eot_id|>"), "{no_prompt}");
    }

    #[test]
    fn hf_environment_features() {
        let t = ChatTemplate::new(
            "{% for m in messages %}\n  {% if loop.index > 2 %}{% break %}{% endif %}\n\
             {{ m.content.strip().upper() }}|{{ m | tojson }}\n{% endfor %}\n",
            "t.jinja",
        )
        .unwrap();
        let out = t
            .render(&[ChatMessage::new("user", " é\"x ")], false, "", "")
            .unwrap();
        assert_eq!(
            out,
            "É\"X|{\"role\": \"user\", \"content\": \" é\\\"x \"}\n"
        );
        let t =
            ChatTemplate::new("{{ raise_exception('roles must alternate') }}", "t.jinja").unwrap();
        let e = t.render(&msgs(), false, "", "").unwrap_err();
        assert!(
            matches!(e, Error::ChatTemplate { .. })
                && e.to_string().contains("roles must alternate"),
            "{e}"
        );
        let e = ChatTemplate::new("{% for %}", "bad.jinja").unwrap_err();
        assert!(e.to_string().contains("bad.jinja"), "{e}");
        let t = ChatTemplate::new("{{ strftime_now('%d %b %Y') }}", "t").unwrap();
        assert_eq!(t.render(&[], false, "", "").unwrap().len(), 11);
    }

    #[test]
    fn strftime_codes() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = 1_709_211_909;
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S %a %A %b %B %j %I%p %y %e %%", t).unwrap(),
            "2024-02-29 13:05:09 Thu Thursday Feb February 060 01PM 24 29 %"
        );
        assert!(strftime("%Q", t).is_err());
    }

    #[test]
    fn tojson_indent() {
        let t = ChatTemplate::new("{{ messages | tojson(indent=2) }}", "t").unwrap();
        let out = t.render(&msgs()[1..2], false, "", "").unwrap();
        assert_eq!(
            out,
            "[\n  {\n    \"role\": \"user\",\n    \"content\": \"Hi!\"\n  }\n]"
        );
    }
}
