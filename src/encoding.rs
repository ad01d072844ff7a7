//! How input bytes become text: the `encoding` of a source, shared by the configuration that
//! names it and the parsers that apply it.

/// How input bytes become text (`encoding`). Windows-1252 also serves Latin-1, as browsers do:
/// it is a superset for every printable character. UTF-16 input is re-encoded as UTF-8 before
/// it is split (see `sources::parse::Transcoded`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Charset {
    Utf8,
    Windows1252,
    Utf16(Endian),
}

/// The byte order of UTF-16 input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endian {
    Little,
    Big,
    /// From the byte-order mark; without one, from the first character (ASCII text has a zero
    /// high byte), else little-endian as Windows writes it.
    Detect,
}

impl Charset {
    /// UTF-8 is checked strictly (a bad byte is an error naming its place); single-byte
    /// encodings always decode. UTF-16 text reaches the parsers already as UTF-8.
    pub fn decode(self, bytes: &[u8]) -> Result<std::borrow::Cow<'_, str>, String> {
        match self {
            Charset::Utf8 | Charset::Utf16(_) => std::str::from_utf8(bytes)
                .map(std::borrow::Cow::Borrowed)
                .map_err(|e| {
                    format!("not valid UTF-8 ({e}); set `encoding` if the export is not UTF-8")
                }),
            Charset::Windows1252 => Ok(encoding_rs::WINDOWS_1252
                .decode_without_bom_handling(bytes)
                .0),
        }
    }

    /// How many bytes of byte-order mark open a file that begins with `head`.
    pub fn bom_len(self, head: &[u8]) -> usize {
        match self {
            Charset::Utf16(_)
                if head.starts_with(&[0xff, 0xfe]) || head.starts_with(&[0xfe, 0xff]) =>
            {
                2
            }
            Charset::Utf8 | Charset::Windows1252 if head.starts_with(&[0xef, 0xbb, 0xbf]) => 3,
            _ => 0,
        }
    }

    /// For UTF-16: whether a file that begins with `head` is big-endian.
    pub fn big_endian(self, head: &[u8]) -> Option<bool> {
        match self {
            Charset::Utf16(Endian::Little) => Some(false),
            Charset::Utf16(Endian::Big) => Some(true),
            Charset::Utf16(Endian::Detect) => Some(match head {
                [0xfe, 0xff, ..] => true,
                [0xff, 0xfe, ..] => false,
                [0, b, ..] if *b != 0 => true,
                _ => false,
            }),
            _ => None,
        }
    }
}
