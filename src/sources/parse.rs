//! Splitting a buffer of file bytes into records with exact byte positions.
//!
//! A source reads from its committed offset into a buffer and asks these parsers for the
//! complete records in it. Each item says where it starts and ends, so the cursor can move to
//! the end of the last item and the dedupe key can use the start. Unless the input is `last`
//! (the file is complete), a record without its terminating newline is left for later: a
//! writer may be in the middle of it.

/// One record found in a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item<T> {
    /// Offset of the record's first byte in the buffer.
    pub start: usize,
    /// Offset just past the record (and its line terminator).
    pub end: usize,
    /// Newlines in the buffer before the record's first byte.
    pub newlines_before: u64,
    pub value: T,
}

/// Splits NDJSON (or any line format): one item per non-blank line, `\r\n` accepted.
pub fn lines(buf: &[u8], last: bool) -> Vec<Item<&[u8]>> {
    let mut items = Vec::new();
    let mut pos = 0;
    let mut newlines = 0u64;
    while pos < buf.len() {
        let (end, content_end, complete) = match memchr(b'\n', &buf[pos..]) {
            Some(i) => (pos + i + 1, pos + i, true),
            None => (buf.len(), buf.len(), false),
        };
        if !complete && !last {
            break;
        }
        let mut line = &buf[pos..content_end];
        if let [rest @ .., b'\r'] = line {
            line = rest;
        }
        if !line.iter().all(u8::is_ascii_whitespace) {
            items.push(Item {
                start: pos,
                end,
                newlines_before: newlines,
                value: line,
            });
        }
        if complete {
            newlines += 1;
        }
        pos = end;
    }
    items
}

/// Where the items of a buffer end: the offset to move the cursor to. Blank lines after the
/// last item are consumed too, so they are not re-read forever.
pub fn consumed_lines(buf: &[u8], last: bool) -> usize {
    match memchr_last(b'\n', buf) {
        _ if last => buf.len(),
        Some(i) => i + 1,
        None => 0,
    }
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|b| *b == needle)
}

fn memchr_last(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().rposition(|b| *b == needle)
}

pub use crate::encoding::{Charset, Endian};

/// A CSV/TSV record: its fields, and which of them are not text in the source's encoding
/// (read with U+FFFD in their place, with why). A row is parked only when what it is mapped by
/// reads one of those: a broken caller name in a column nobody sends loses no call.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fields {
    pub fields: Vec<String>,
    /// (field index, why) for each field that is not valid text.
    pub unreadable: Vec<(usize, String)>,
}

/// UTF-16 input re-encoded as UTF-8, with the way back from a line start in the UTF-8 text to
/// its byte offset in the input, so cursors and dedupe keys stay byte offsets in the file.
pub struct Transcoded {
    pub text: Vec<u8>,
    /// (offset in `text`, offset in the input) at the start, after each newline and at the end.
    marks: Vec<(usize, usize)>,
}

impl Transcoded {
    /// Re-encodes complete lines of `input` (up to its last newline), or all of it if `last`.
    pub fn utf16(input: &[u8], big_endian: bool, last: bool) -> Self {
        let codec = if big_endian {
            encoding_rs::UTF_16BE
        } else {
            encoding_rs::UTF_16LE
        };
        let newline: [u8; 2] = if big_endian { [0, b'\n'] } else { [b'\n', 0] };
        let mut text = Vec::with_capacity(input.len() / 2 + 16);
        let mut marks = vec![(0, 0)];
        let mut from = 0;
        for (unit, pair) in input.chunks_exact(2).enumerate() {
            if pair == newline {
                let to = unit * 2 + 2;
                text.extend_from_slice(
                    codec
                        .decode_without_bom_handling(&input[from..to])
                        .0
                        .as_bytes(),
                );
                marks.push((text.len(), to));
                from = to;
            }
        }
        if last && from < input.len() {
            text.extend_from_slice(
                codec
                    .decode_without_bom_handling(&input[from..])
                    .0
                    .as_bytes(),
            );
            marks.push((text.len(), input.len()));
        }
        Self { text, marks }
    }

    /// The input offset of `pos`, a line start or the end of `text`; any other position maps
    /// to the start of its line.
    pub fn input_offset(&self, pos: usize) -> usize {
        match self.marks.binary_search_by_key(&pos, |m| m.0) {
            Ok(i) => self.marks[i].1,
            Err(i) => self.marks[i.saturating_sub(1)].1,
        }
    }
}

/// Splits delimited text into records with RFC 4180 quoting (quoted delimiters, doubled quotes,
/// newlines inside quotes), `\r\n` or `\n` endings; blank lines are skipped. Returns the items
/// and the offset just past the last complete record. At most `limit` records are split; the
/// caller knows there may be more when it gets `limit` of them.
pub fn csv(
    buf: &[u8],
    delimiter: u8,
    charset: Charset,
    last: bool,
    limit: usize,
) -> (Vec<Item<Fields>>, usize) {
    let mut reader = csv_core::ReaderBuilder::new().delimiter(delimiter).build();
    let mut items = Vec::new();
    let mut out = vec![0u8; 4096];
    let mut ends = vec![0usize; 64];
    let (mut pos, mut outlen, mut endlen) = (0usize, 0usize, 0usize);
    let mut record_start = 0usize;
    let mut consumed = 0usize;
    let mut counted = (0usize, 0u64); // (offset counted up to, newlines before it)
    loop {
        let input = &buf[pos..];
        let (result, nin, nout, nend) =
            reader.read_record(input, &mut out[outlen..], &mut ends[endlen..]);
        pos += nin;
        outlen += nout;
        endlen += nend;
        use csv_core::ReadRecordResult::*;
        match result {
            InputEmpty if !last => break,
            // `last`: the next call's empty input tells the reader the data has ended. The
            // last record then comes as any other, after growing the buffers if ending its last
            // field needs room they do not have (a record that filled them exactly).
            InputEmpty => {}
            OutputFull => out.resize(out.len() * 2, 0),
            OutputEndsFull => ends.resize(ends.len() * 2, 0),
            Record => {
                push_record(
                    charset,
                    buf,
                    &mut items,
                    record_start..pos,
                    &out,
                    &ends[..endlen],
                    &mut counted,
                );
                record_start = pos;
                consumed = pos;
                outlen = 0;
                endlen = 0;
                if items.len() >= limit {
                    break;
                }
            }
            End => {
                consumed = buf.len();
                break;
            }
        }
    }
    // csv-core reports a record at its `\r` and skips the `\n` with the next one; take the
    // `\n` now so the cursor does not stop between the two bytes.
    if consumed < buf.len() && buf[consumed] == b'\n' && consumed > 0 && buf[consumed - 1] == b'\r'
    {
        consumed += 1;
    }
    (items, consumed)
}

fn push_record(
    charset: Charset,
    buf: &[u8],
    items: &mut Vec<Item<Fields>>,
    span: std::ops::Range<usize>,
    out: &[u8],
    ends: &[usize],
    counted: &mut (usize, u64),
) {
    let (start, end) = (span.start, span.end);
    // Skip the line terminators csv-core left in front of the record.
    let content = start
        + buf[start..end]
            .iter()
            .take_while(|b| **b == b'\r' || **b == b'\n')
            .count();
    counted.1 += buf[counted.0..content]
        .iter()
        .filter(|b| **b == b'\n')
        .count() as u64;
    counted.0 = content;
    let mut value = Fields {
        fields: Vec::with_capacity(ends.len()),
        unreadable: Vec::new(),
    };
    let mut from = 0;
    for &to in ends {
        let bytes = &out[from..to];
        match charset.decode(bytes) {
            Ok(s) => value.fields.push(s.into_owned()),
            Err(e) => {
                value.unreadable.push((value.fields.len(), e));
                value
                    .fields
                    .push(String::from_utf8_lossy(bytes).into_owned());
            }
        }
        from = to;
    }
    items.push(Item {
        start: content,
        end,
        newlines_before: counted.1,
        value,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (fuzz/corpus/csv): the last record of a complete file, without its
    /// newline and ending in a delimiter (an empty last field), was dropped when its other
    /// fields filled the parser's buffer of field ends exactly (64 of them, then 128, ...).
    #[test]
    fn a_last_record_that_fills_the_buffers_exactly_is_kept() {
        for fields in [63, 64, 65, 66, 129] {
            // "x;x;...;x;": the last field is empty.
            let row = format!("{};", vec!["x"; fields - 1].join(";"));
            for before in ["", "a;b\n"] {
                let buf = format!("{before}{row}");
                let (items, consumed) = csv(buf.as_bytes(), b';', Charset::Utf8, true, usize::MAX);
                assert_eq!(consumed, buf.len());
                let last = items.last().expect("a record");
                assert_eq!(
                    last.value.fields.len(),
                    fields,
                    "{fields} fields after {before:?}"
                );
            }
        }
        // The output buffer filled exactly by the last field's bytes.
        let buf = "y".repeat(4096);
        let (items, _) = csv(buf.as_bytes(), b';', Charset::Utf8, true, usize::MAX);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].value.fields[0].len(), 4096);
    }

    #[test]
    fn a_partial_last_line_waits_unless_the_file_is_complete() {
        let buf = b"{\"a\":1}\n{\"a\":2}\n{\"a\":";
        let items = lines(buf, false);
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].end, 16);
        assert_eq!(consumed_lines(buf, false), 16);
        assert_eq!(lines(buf, true).len(), 3);
    }

    #[test]
    fn blank_lines_and_crlf_are_handled_and_lines_counted() {
        let buf = b"a\r\n\r\n  \nb\n";
        let items = lines(buf, false);
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].value, b"a");
        assert_eq!(items[1].value, b"b");
        assert_eq!(items[1].newlines_before, 3);
        assert_eq!(consumed_lines(buf, false), buf.len());
    }

    #[test]
    fn csv_quotes_doubled_quotes_and_embedded_newlines() {
        let buf = b"id,note\n1,\"said \"\"hi\"\"\"\n2,\"two\nlines\"\n3,x\n";
        let (items, consumed) = csv(buf, b',', Charset::Utf8, false, usize::MAX);
        assert_eq!(consumed, buf.len());
        let rows: Vec<_> = items.iter().map(|i| i.value.fields.clone()).collect();
        assert_eq!(rows[1], vec!["1", "said \"hi\""]);
        assert_eq!(rows[2], vec!["2", "two\nlines"]);
        assert_eq!(rows[3], vec!["3", "x"]);
        // Line numbers (0-based newlines before) account for the embedded newline.
        assert_eq!(items[3].newlines_before, 4);
    }

    #[test]
    fn csv_stops_before_a_record_cut_inside_quotes() {
        let buf = b"1,a\n2,\"open\nstill open";
        let (items, consumed) = csv(buf, b',', Charset::Utf8, false, usize::MAX);
        assert_eq!(items.len(), 1);
        assert_eq!(consumed, 4);
        let (items, consumed) = csv(buf, b',', Charset::Utf8, true, usize::MAX);
        assert_eq!(items.len(), 2);
        assert_eq!(consumed, buf.len());
    }

    #[test]
    fn csv_stops_at_its_limit_where_the_next_record_starts() {
        let buf = b"a\r\nb\r\nc\r\n";
        let (items, consumed) = csv(buf, b',', Charset::Utf8, false, 2);
        assert_eq!(items.len(), 2);
        assert_eq!(consumed, 6);
        let (rest, _) = csv(&buf[consumed..], b',', Charset::Utf8, false, 2);
        assert_eq!(rest[0].value.fields, vec!["c"]);
    }

    #[test]
    fn csv_with_crlf_consumes_the_whole_terminator() {
        let buf = b"a;b\r\nc;d\r\n";
        let (items, consumed) = csv(buf, b';', Charset::Utf8, false, usize::MAX);
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].value.fields, vec!["c", "d"]);
        assert_eq!(items[1].start, 5);
        assert_eq!(consumed, buf.len());
    }

    #[test]
    fn csv_without_final_newline_waits_until_complete() {
        let (items, consumed) = csv(b"a,b\nc,d", b',', Charset::Utf8, false, usize::MAX);
        assert_eq!((items.len(), consumed), (1, 4));
        let (items, consumed) = csv(b"a,b\nc,d", b',', Charset::Utf8, true, usize::MAX);
        assert_eq!((items.len(), consumed), (2, 7));
    }

    fn quote(field: &str) -> String {
        if field.contains([',', '"', '\n', '\r']) || field.is_empty() {
            format!("\"{}\"", field.replace('"', "\"\""))
        } else {
            field.to_owned()
        }
    }

    proptest::proptest! {
        /// Reading a growing file in two steps (cut anywhere, the second step continuing at the
        /// first step's `consumed`) yields exactly the rows of reading it whole.
        #[test]
        fn csv_read_in_two_steps_equals_read_whole(
            rows in proptest::collection::vec(
                proptest::collection::vec("[a-z\",\n ]{0,6}", 1..4), 1..12),
            cut in 0usize..400,
            crlf in proptest::bool::ANY,
        ) {
            let end = if crlf { "\r\n" } else { "\n" };
            let text: String = rows
                .iter()
                .map(|r| r.iter().map(|f| quote(f)).collect::<Vec<_>>().join(",") + end)
                .collect();
            let buf = text.as_bytes();
            let cut = cut.min(buf.len());
            let (first, consumed) = csv(&buf[..cut], b',', Charset::Utf8, false, usize::MAX);
            proptest::prop_assert!(consumed <= cut);
            let (second, _) = csv(&buf[consumed..], b',', Charset::Utf8, true, usize::MAX);
            let got: Vec<Vec<String>> = first
                .into_iter()
                .chain(second)
                .map(|i| i.value.fields)
                .collect();
            proptest::prop_assert_eq!(got, rows);
        }

        #[test]
        fn lines_read_in_two_steps_equal_read_whole(
            lines in proptest::collection::vec("[a-z{}:]{1,20}", 1..20),
            cut in 0usize..500,
        ) {
            let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            let buf = text.as_bytes();
            let cut = cut.min(buf.len());
            let consumed = consumed_lines(&buf[..cut], false);
            let first = lines_of(&buf[..cut], false);
            proptest::prop_assert_eq!(first.len(), buf[..consumed].iter().filter(|b| **b == b'\n').count());
            let mut got = first;
            got.extend(lines_of(&buf[consumed..], true));
            proptest::prop_assert_eq!(got, lines);
        }
    }

    fn lines_of(buf: &[u8], last: bool) -> Vec<String> {
        lines(buf, last)
            .iter()
            .map(|i| String::from_utf8(i.value.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn invalid_utf8_is_reported_per_field_and_the_rest_is_read() {
        let (items, _) = csv(b"ok,1\n\xff,2\n", b',', Charset::Utf8, false, usize::MAX);
        assert!(items[0].value.unreadable.is_empty());
        assert_eq!(items[1].value.fields, ["\u{fffd}", "2"]);
        let (index, why) = &items[1].value.unreadable[0];
        assert_eq!(*index, 0);
        assert!(why.contains("UTF-8"), "{why}");
    }

    fn utf16(text: &str, big_endian: bool) -> Vec<u8> {
        text.encode_utf16()
            .flat_map(|u| {
                if big_endian {
                    u.to_be_bytes()
                } else {
                    u.to_le_bytes()
                }
            })
            .collect()
    }

    #[test]
    fn utf16_lines_map_back_to_input_offsets() {
        for be in [false, true] {
            let input = utf16("Zeit;Müller\r\n1;€\r\n2;partial", be);
            let t = Transcoded::utf16(&input, be, false);
            assert_eq!(t.text, "Zeit;Müller\r\n1;€\r\n".as_bytes());
            let (items, consumed) = csv(&t.text, b';', Charset::Utf8, false, usize::MAX);
            assert_eq!(items[1].value.fields, vec!["1", "€"]);
            // The second record starts after 13 UTF-16 units; the cursor stops after 18.
            assert_eq!(t.input_offset(items[1].start), 26);
            assert_eq!(t.input_offset(consumed), 36);
            let whole = Transcoded::utf16(&input, be, true);
            assert!(whole.text.ends_with(b"2;partial"));
            assert_eq!(whole.input_offset(whole.text.len()), input.len());
        }
    }

    #[test]
    fn utf16_byte_order_from_bom_or_first_character() {
        let detect = Charset::Utf16(Endian::Detect);
        assert_eq!(detect.big_endian(&[0xfe, 0xff, 0, b'a']), Some(true));
        assert_eq!(detect.big_endian(&[0xff, 0xfe, b'a', 0]), Some(false));
        assert_eq!(detect.big_endian(&[0, b'a']), Some(true));
        assert_eq!(detect.big_endian(&[b'a', 0]), Some(false));
        assert_eq!(detect.bom_len(&[0xff, 0xfe, b'a', 0]), 2);
        assert_eq!(Charset::Utf8.bom_len(&[0xef, 0xbb, 0xbf, b'a']), 3);
        assert_eq!(Charset::Utf8.big_endian(b"a"), None);
    }

    #[test]
    fn windows_1252_fields_decode_to_text() {
        let (items, _) = csv(
            b"Warteschlange;Gespr\xe4chszeit\nM\xfcller;1,5\n",
            b';',
            Charset::Windows1252,
            false,
            usize::MAX,
        );
        assert_eq!(
            items[0].value.fields,
            vec!["Warteschlange", "Gesprächszeit"]
        );
        assert_eq!(items[1].value.fields, vec!["Müller", "1,5"]);
    }
}
