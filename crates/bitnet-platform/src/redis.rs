//! A small Redis client: RESP2 over TCP, the few commands the limiter
//! needs (`EVALSHA`/`EVAL`, `PING`), a pool of idle connections, and a
//! timeout on every call so a hung Redis becomes an error, not a hang.

use crate::error::{PlatformError, Result};
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A reply.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// `+OK`.
    Status(String),
    /// `:n`.
    Int(i64),
    /// `$n` bulk string (`None` for the null bulk).
    Bulk(Option<Vec<u8>>),
    /// `*n`.
    Array(Vec<Reply>),
}

/// Where Redis is and how to log in.
#[derive(Clone, Debug)]
struct Target {
    addr: String,
    password: Option<String>,
    db: u32,
}

fn parse_url(url: &str) -> Result<Target> {
    let bad = |why: &str| PlatformError::Config(format!("redis URL: {why}"));
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| bad("must start with redis://"))?;
    let (auth, hostpath) = match rest.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    let password = auth.and_then(|a| {
        let p = a.split_once(':').map_or(a, |(_, p)| p);
        (!p.is_empty()).then(|| p.to_string())
    });
    let (host, db) = match hostpath.split_once('/') {
        Some((h, d)) if !d.is_empty() => (
            h,
            d.parse()
                .map_err(|_| bad("the database must be a number"))?,
        ),
        Some((h, _)) => (h, 0),
        None => (hostpath, 0),
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let addr = if host
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        host.to_string()
    } else {
        format!("{host}:6379")
    };
    Ok(Target { addr, password, db })
}

struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    async fn call(&mut self, args: &[&[u8]]) -> Result<Reply> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.reader.get_mut().write_all(&out).await.map_err(io)?;
        read_reply(&mut self.reader).await
    }
}

fn io(e: std::io::Error) -> PlatformError {
    PlatformError::Redis(e.to_string())
}

/// Reads one reply; Redis errors (`-ERR ...`) become [`PlatformError::Redis`].
fn read_reply(
    r: &mut BufReader<TcpStream>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Reply>> + Send + '_>> {
    Box::pin(async move {
        let mut line = String::new();
        if r.read_line(&mut line).await.map_err(io)? == 0 {
            return Err(PlatformError::Redis("connection closed".into()));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let (kind, rest) = line.split_at(line.len().min(1));
        let num = || {
            rest.parse::<i64>()
                .map_err(|_| PlatformError::Redis(format!("bad reply line `{line}`")))
        };
        match kind {
            "+" => Ok(Reply::Status(rest.to_string())),
            "-" => Err(PlatformError::Redis(rest.to_string())),
            ":" => Ok(Reply::Int(num()?)),
            "$" => {
                let n = num()?;
                if n < 0 {
                    return Ok(Reply::Bulk(None));
                }
                if n > 512 << 20 {
                    return Err(PlatformError::Redis("reply too large".into()));
                }
                let mut buf = vec![0u8; n as usize + 2];
                r.read_exact(&mut buf).await.map_err(io)?;
                buf.truncate(n as usize);
                Ok(Reply::Bulk(Some(buf)))
            }
            "*" => {
                let n = num()?;
                let mut items = Vec::with_capacity(n.clamp(0, 64) as usize);
                for _ in 0..n.max(0) {
                    items.push(read_reply(r).await?);
                }
                Ok(Reply::Array(items))
            }
            _ => Err(PlatformError::Redis(format!("unexpected reply `{line}`"))),
        }
    })
}

/// A pooled client.
pub struct RedisClient {
    target: Target,
    idle: Mutex<Vec<Conn>>,
    timeout: Duration,
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisClient")
            .field("addr", &self.target.addr)
            .finish_non_exhaustive()
    }
}

impl RedisClient {
    /// A client for `url`; connects lazily.
    pub fn new(url: &str) -> Result<RedisClient> {
        Ok(RedisClient {
            target: parse_url(url)?,
            idle: Mutex::new(Vec::new()),
            timeout: Duration::from_secs(1),
        })
    }

    async fn connect(&self) -> Result<Conn> {
        let stream = TcpStream::connect(&self.target.addr).await.map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        let mut c = Conn {
            reader: BufReader::new(stream),
        };
        if let Some(p) = &self.target.password {
            c.call(&[b"AUTH", p.as_bytes()]).await?;
        }
        if self.target.db != 0 {
            c.call(&[b"SELECT", self.target.db.to_string().as_bytes()])
                .await?;
        }
        Ok(c)
    }

    /// Runs one command. A connection that failed is dropped, not reused.
    pub async fn call(&self, args: &[&[u8]]) -> Result<Reply> {
        let pooled = self.idle.lock().expect("redis pool").pop();
        let work = async {
            let mut conn = match pooled {
                Some(c) => c,
                None => self.connect().await?,
            };
            let reply = conn.call(args).await;
            // A Redis-level error (`-ERR`) leaves the connection usable.
            if reply.is_ok()
                || matches!(&reply, Err(PlatformError::Redis(m)) if m.starts_with("NOSCRIPT") || m.starts_with("ERR"))
            {
                self.idle.lock().expect("redis pool").push(conn);
            }
            reply
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| {
                PlatformError::Redis(format!(
                    "no answer from {} within {:?}",
                    self.target.addr, self.timeout
                ))
            })?
    }

    /// Runs a Lua script by its SHA-1, loading it on `NOSCRIPT`.
    pub async fn eval(&self, script: &Script, keys: &[&str], args: &[String]) -> Result<Reply> {
        let mut argv: Vec<&[u8]> = vec![b"EVALSHA", script.sha1.as_bytes()];
        let nkeys = keys.len().to_string();
        argv.push(nkeys.as_bytes());
        argv.extend(keys.iter().map(|k| k.as_bytes()));
        argv.extend(args.iter().map(|a| a.as_bytes()));
        match self.call(&argv).await {
            Err(PlatformError::Redis(m)) if m.starts_with("NOSCRIPT") => {
                argv[0] = b"EVAL";
                argv[1] = script.source.as_bytes();
                self.call(&argv).await
            }
            other => other,
        }
    }

    /// `PING`.
    pub async fn ping(&self) -> Result<()> {
        self.call(&[b"PING"]).await.map(|_| ())
    }
}

/// A Lua script and its SHA-1 (for `EVALSHA`).
#[derive(Debug)]
pub struct Script {
    source: &'static str,
    sha1: String,
}

impl Script {
    /// Wraps `source`.
    pub fn new(source: &'static str) -> Script {
        Script {
            source,
            sha1: sha1_hex(source.as_bytes()),
        }
    }
}

/// SHA-1, only to name scripts the way Redis does (not for security).
fn sha1_hex(data: &[u8]) -> String {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    let mut msg = data.to_vec();
    let bits = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_be_bytes());
    for chunk in msg.chunks(64) {
        let mut w = [0u32; 80];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([
                chunk[4 * i],
                chunk[4 * i + 1],
                chunk[4 * i + 2],
                chunk[4 * i + 3],
            ]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_matches_known_digests() {
        assert_eq!(sha1_hex(b""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(
            sha1_hex(&[b'a'; 1000]),
            "291e9a6c66994949b57ba5e650361e98fc36b1ba"
        );
    }

    #[test]
    fn urls_parse() {
        let t = parse_url("redis://:pw@example:6380/2").unwrap();
        assert_eq!(
            (t.addr.as_str(), t.password.as_deref(), t.db),
            ("example:6380", Some("pw"), 2)
        );
        let t = parse_url("redis://localhost").unwrap();
        assert_eq!(
            (t.addr.as_str(), t.password, t.db),
            ("localhost:6379", None, 0)
        );
        assert!(parse_url("http://x").is_err());
        assert!(parse_url("redis:///3").is_err());
    }
}
