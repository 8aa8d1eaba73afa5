//! HPACK (RFC 7541) header compression for the HTTP/2 server: a full decoder and a tiny
//! encoder.
//!
//! [`Decoder`] decodes the header blocks of one connection. It keeps the dynamic table across
//! blocks, accepts every representation (indexed, literal with incremental indexing, without
//! indexing and never indexed, with an indexed or a literal name), raw and Huffman strings, and
//! dynamic table size updates at the start of a block. Fields are handed to a callback as
//! slices borrowed from the block, the static table, the dynamic table or a scratch buffer
//! inside the decoder, so decoding a block allocates nothing once the buffers have grown; only
//! storing an entry in the dynamic table may allocate. Huffman strings are decoded with a
//! lookup table of the short codes, built once per process, and a binary search for the rest.
//!
//! The last short Huffman string decoded is remembered with its decoding, so a repeat (Envoy
//! sends `:path` as the same never-indexed Huffman literal on every Check) is a comparison.
//!
//! Limits: integers above `u32::MAX` or longer than five continuation octets are rejected; a
//! string longer than [`DEFAULT_MAX_STRING_LEN`] octets after decoding is rejected (see
//! [`Decoder::with_max_string_len`]); at most two size updates may open a block. The decoder
//! does not bound the total size of a header list, nor check names and values against HTTP
//! rules (lower-case names, pseudo-headers): the callback has to do that.
//!
//! The encoder ([`encode_field`], [`encode_status`], [`encode_size_update`]) never indexes, so
//! it keeps no state: it writes literals without indexing (the name as a static-table index
//! when there is one) and never uses Huffman coding. The connection adds the two fields every
//! Check answer repeats to the peer's table by itself (`conn::AnswerTable`).

use std::collections::VecDeque;
use std::sync::LazyLock;

/// The default limit on the length of one decoded name or value, in octets.
pub const DEFAULT_MAX_STRING_LEN: usize = 64 * 1024;

/// The size a dynamic table entry is charged beyond its name and value (RFC 7541 4.1).
const ENTRY_OVERHEAD: usize = 32;

/// The static table (RFC 7541 Appendix A); HPACK index `i` is element `i - 1`.
#[rustfmt::skip]
const STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""), (b":method", b"GET"), (b":method", b"POST"), (b":path", b"/"),
    (b":path", b"/index.html"), (b":scheme", b"http"), (b":scheme", b"https"), (b":status", b"200"),
    (b":status", b"204"), (b":status", b"206"), (b":status", b"304"), (b":status", b"400"),
    (b":status", b"404"), (b":status", b"500"), (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"), (b"accept-language", b""), (b"accept-ranges", b""),
    (b"accept", b""), (b"access-control-allow-origin", b""), (b"age", b""), (b"allow", b""),
    (b"authorization", b""), (b"cache-control", b""), (b"content-disposition", b""),
    (b"content-encoding", b""), (b"content-language", b""), (b"content-length", b""),
    (b"content-location", b""), (b"content-range", b""), (b"content-type", b""), (b"cookie", b""),
    (b"date", b""), (b"etag", b""), (b"expect", b""), (b"expires", b""), (b"from", b""),
    (b"host", b""), (b"if-match", b""), (b"if-modified-since", b""), (b"if-none-match", b""),
    (b"if-range", b""), (b"if-unmodified-since", b""), (b"last-modified", b""), (b"link", b""),
    (b"location", b""), (b"max-forwards", b""), (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""), (b"range", b""), (b"referer", b""), (b"refresh", b""),
    (b"retry-after", b""), (b"server", b""), (b"set-cookie", b""),
    (b"strict-transport-security", b""), (b"transfer-encoding", b""), (b"user-agent", b""),
    (b"vary", b""), (b"via", b""), (b"www-authenticate", b""),
];

/// A malformed header block. For HTTP/2 every one is a connection error of type
/// COMPRESSION_ERROR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("header block ends in the middle of a representation")]
    Truncated,
    #[error("integer is larger than 2^32 - 1 or has more than 5 continuation octets")]
    IntegerOverflow,
    #[error("index 0 does not name a table entry")]
    IndexZero,
    #[error("index {index} is beyond the dynamic table ({entries} entries)")]
    IndexOutOfRange { index: usize, entries: usize },
    #[error("dynamic table size update to {size} exceeds the advertised maximum of {max}")]
    TableSizeTooLarge { size: usize, max: usize },
    #[error("dynamic table size update after a header field")]
    SizeUpdateAfterField,
    #[error("more than two dynamic table size updates at the start of a header block")]
    TooManySizeUpdates,
    #[error("string of {len} octets exceeds the limit of {max} octets")]
    StringTooLong { len: usize, max: usize },
    #[error("huffman string contains the eos symbol")]
    HuffmanEos,
    #[error("huffman padding of {0} bits is longer than 7 bits")]
    HuffmanPaddingTooLong(u32),
    #[error("huffman string ends in bits that are neither a code nor all-ones padding")]
    HuffmanBadPadding,
}

/// Why [`Decoder::decode`] stopped: a malformed block, or an error returned by the callback.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError<E> {
    #[error(transparent)]
    Hpack(#[from] HpackError),
    #[error("header field rejected: {0}")]
    Field(E),
}

/// One dynamic table entry: the name followed by the value in one buffer.
#[derive(Debug)]
struct Entry {
    bytes: Vec<u8>,
    name_len: usize,
}

impl Entry {
    fn field(&self) -> (&[u8], &[u8]) {
        self.bytes
            .split_at_checked(self.name_len)
            .unwrap_or((&self.bytes, &[]))
    }
}

/// Where a decoded string lives: a range of the block or of the decoder's scratch buffer.
#[derive(Clone, Copy)]
enum Str {
    Block(usize, usize),
    Scratch(usize, usize),
}

impl Str {
    fn get<'a>(self, block: &'a [u8], scratch: &'a [u8]) -> &'a [u8] {
        let found = match self {
            Str::Block(start, end) => block.get(start..end),
            Str::Scratch(start, end) => scratch.get(start..end),
        };
        found.unwrap_or_default()
    }
}

/// Decodes header blocks of one HTTP/2 connection (the dynamic table lives across blocks).
#[derive(Debug)]
pub struct Decoder {
    /// Newest entry first: HPACK index 62 is `entries[0]`.
    entries: VecDeque<Entry>,
    /// Sum of the entry sizes (name + value + 32).
    size: usize,
    /// The current maximum, as set by the last size update.
    max_size: usize,
    /// The SETTINGS_HEADER_TABLE_SIZE we advertised: the ceiling for size updates.
    max_allowed: usize,
    max_string_len: usize,
    /// Huffman output of the field being decoded.
    scratch: Vec<u8>,
    /// The buffer of the last evicted entry, reused for the next insertion (so it is never
    /// larger than the table).
    spare: Vec<u8>,
    /// The last short Huffman string decoded, and what it decoded to.
    memo: Memo,
}

/// Envoy sends `:path` on every Check as the same Huffman literal that is never indexed; the
/// last short Huffman string's decoding is kept, so the next identical one is a comparison.
#[derive(Debug, Default)]
struct Memo {
    raw: Vec<u8>,
    text: Vec<u8>,
}

/// Huffman strings up to this long (encoded) are remembered.
const MEMO_MAX: usize = 256;

impl Decoder {
    /// `max_table_size`: the SETTINGS_HEADER_TABLE_SIZE we advertised (4096 by default);
    /// a dynamic table size update above it is an error.
    ///
    /// The table starts with `max_table_size` as its maximum. HTTP/2 peers start from 4096
    /// until they see our SETTINGS, so advertising less than 4096 needs the peer to send a
    /// size update before the decoder can agree with it.
    pub fn new(max_table_size: usize) -> Decoder {
        Decoder {
            entries: VecDeque::new(),
            size: 0,
            max_size: max_table_size,
            max_allowed: max_table_size,
            max_string_len: DEFAULT_MAX_STRING_LEN,
            scratch: Vec::new(),
            spare: Vec::new(),
            memo: Memo::default(),
        }
    }

    /// Replaces the limit on one decoded name or value ([`DEFAULT_MAX_STRING_LEN`] octets).
    #[must_use]
    pub fn with_max_string_len(mut self, max_string_len: usize) -> Decoder {
        self.max_string_len = max_string_len;
        self
    }

    /// Decodes one complete header block (HEADERS + CONTINUATION payloads already joined),
    /// calling `field(name, value)` for every field in order. `field` may return an error to stop.
    /// Any decoding error is a connection error of type COMPRESSION_ERROR for the caller.
    ///
    /// Stopping early (on any error, including one from `field`) leaves the dynamic table out
    /// of step with the peer's, so the connection cannot decode further blocks. To refuse a
    /// request but keep the connection, let `field` return `Ok` and record the problem.
    pub fn decode<E>(
        &mut self,
        block: &[u8],
        mut field: impl FnMut(&[u8], &[u8]) -> Result<(), E>,
    ) -> Result<(), DecodeError<E>> {
        let mut pos = 0;
        let mut seen_field = false;
        let mut size_updates = 0;
        while let Some(&first) = block.get(pos) {
            if first & 0x80 != 0 {
                let index = read_int(block, &mut pos, 7)?;
                let (name, value) = lookup(&self.entries, index)?;
                field(name, value).map_err(DecodeError::Field)?;
            } else if first & 0xe0 == 0x20 {
                if seen_field {
                    return Err(HpackError::SizeUpdateAfterField.into());
                }
                if size_updates == 2 {
                    return Err(HpackError::TooManySizeUpdates.into());
                }
                size_updates += 1;
                let size = read_int(block, &mut pos, 5)?;
                if size > self.max_allowed {
                    let max = self.max_allowed;
                    return Err(HpackError::TableSizeTooLarge { size, max }.into());
                }
                self.max_size = size;
                self.evict_to(size);
                continue;
            } else if first & 0x40 != 0 {
                self.literal(block, &mut pos, 6, true, &mut field)?;
            } else {
                // 0000xxxx without indexing, 0001xxxx never indexed: the same to a decoder.
                self.literal(block, &mut pos, 4, false, &mut field)?;
            }
            seen_field = true;
        }
        Ok(())
    }

    /// Decodes one literal representation whose first octet is at `pos`.
    fn literal<E>(
        &mut self,
        block: &[u8],
        pos: &mut usize,
        prefix: u32,
        indexing: bool,
        field: &mut impl FnMut(&[u8], &[u8]) -> Result<(), E>,
    ) -> Result<(), DecodeError<E>> {
        self.scratch.clear();
        let max = self.max_string_len;
        let index = read_int(block, pos, prefix)?;
        let literal_name = match index {
            0 => Some(read_string(
                block,
                pos,
                &mut self.scratch,
                &mut self.memo,
                max,
            )?),
            _ => None,
        };
        let value = read_string(block, pos, &mut self.scratch, &mut self.memo, max)?;
        let name = match literal_name {
            Some(name) => name.get(block, &self.scratch),
            None => lookup(&self.entries, index)?.0,
        };
        let value = value.get(block, &self.scratch);
        if !indexing {
            return field(name, value).map_err(DecodeError::Field);
        }
        let needed = name.len() + value.len();
        let mut bytes = std::mem::take(&mut self.spare);
        if bytes.capacity() > 2 * needed + 64 {
            // Don't let a small entry pin a large buffer.
            bytes = Vec::with_capacity(needed);
        }
        bytes.clear();
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(value);
        let entry = Entry {
            bytes,
            name_len: name.len(),
        };
        let (name, value) = entry.field();
        field(name, value).map_err(DecodeError::Field)?;
        self.insert(entry);
        Ok(())
    }

    /// Adds an entry, evicting the oldest ones to make room; an entry larger than the whole
    /// table empties it and is not stored (RFC 7541 4.4).
    fn insert(&mut self, entry: Entry) {
        let entry_size = entry.bytes.len() + ENTRY_OVERHEAD;
        self.evict_to(self.max_size.saturating_sub(entry_size));
        if entry_size > self.max_size {
            return;
        }
        self.entries.push_front(entry);
        self.size += entry_size;
    }

    /// Evicts the oldest entries until the table size is at most `limit`.
    fn evict_to(&mut self, limit: usize) {
        while self.size > limit {
            let Some(oldest) = self.entries.pop_back() else {
                self.size = 0;
                break;
            };
            self.size = self
                .size
                .saturating_sub(oldest.bytes.len() + ENTRY_OVERHEAD);
            self.spare = oldest.bytes;
        }
    }
}

/// The field at HPACK `index`: static table first, then the dynamic table, newest first.
fn lookup(entries: &VecDeque<Entry>, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
    if index == 0 {
        return Err(HpackError::IndexZero);
    }
    if let Some(&field) = STATIC_TABLE.get(index - 1) {
        return Ok(field);
    }
    entries
        .get(index - 1 - STATIC_TABLE.len())
        .map(Entry::field)
        .ok_or(HpackError::IndexOutOfRange {
            index,
            entries: entries.len(),
        })
}

/// Reads an integer with a `prefix`-bit prefix (RFC 7541 5.1) starting at `block[*pos]`.
fn read_int(block: &[u8], pos: &mut usize, prefix: u32) -> Result<usize, HpackError> {
    let mask = (1u8 << prefix) - 1;
    let first = block.get(*pos).ok_or(HpackError::Truncated)? & mask;
    *pos += 1;
    if first < mask {
        return Ok(usize::from(first));
    }
    let mut value = u64::from(mask);
    for shift in [0, 7, 14, 21, 28] {
        let octet = *block.get(*pos).ok_or(HpackError::Truncated)?;
        *pos += 1;
        value += u64::from(octet & 0x7f) << shift;
        if octet & 0x80 == 0 {
            return u32::try_from(value)
                .ok()
                .and_then(|value| usize::try_from(value).ok())
                .ok_or(HpackError::IntegerOverflow);
        }
    }
    Err(HpackError::IntegerOverflow)
}

/// Reads a string literal (RFC 7541 5.2) at `block[*pos]`; Huffman strings are decoded onto
/// the end of `scratch` (or copied from `memo` when they are the last one decoded).
fn read_string(
    block: &[u8],
    pos: &mut usize,
    scratch: &mut Vec<u8>,
    memo: &mut Memo,
    max: usize,
) -> Result<Str, HpackError> {
    let huffman = block.get(*pos).is_some_and(|&octet| octet & 0x80 != 0);
    let len = read_int(block, pos, 7)?;
    let start = *pos;
    let end = start.checked_add(len).ok_or(HpackError::Truncated)?;
    let raw = block.get(start..end).ok_or(HpackError::Truncated)?;
    *pos = end;
    if !huffman {
        if len > max {
            return Err(HpackError::StringTooLong { len, max });
        }
        return Ok(Str::Block(start, end));
    }
    let out_start = scratch.len();
    if !raw.is_empty() && raw == memo.raw.as_slice() {
        scratch.extend_from_slice(&memo.text);
    } else {
        huffman_decode(raw, scratch)?;
        if raw.len() <= MEMO_MAX {
            memo.raw.clear();
            memo.raw.extend_from_slice(raw);
            memo.text.clear();
            memo.text
                .extend_from_slice(scratch.get(out_start..).unwrap_or_default());
        }
    }
    let len = scratch.len() - out_start;
    if len > max {
        scratch.truncate(out_start);
        return Err(HpackError::StringTooLong { len, max });
    }
    Ok(Str::Scratch(out_start, scratch.len()))
}

/// Codes of at most this many bits are decoded with one lookup in [`Huffman::short`].
const SHORT_BITS: u32 = 11;

/// The HPACK Huffman code (RFC 7541 Appendix B) arranged for decoding.
struct Huffman {
    /// Indexed by the next `SHORT_BITS` bits: `len << 8 | symbol` of the code they start
    /// with, or 0 when that code is longer than `SHORT_BITS`.
    short: [u16; 1 << SHORT_BITS],
    /// Every code as `(code aligned to bit 31, length, symbol)`, sorted by aligned code. The
    /// code is prefix-free, so the code a bit string starts with is the last one whose
    /// aligned value is at most the string's first 32 bits.
    all: Vec<(u32, u32, u16)>,
}

static HUFFMAN: LazyLock<Huffman> = LazyLock::new(|| {
    let mut short = [0u16; 1 << SHORT_BITS];
    let mut all = Vec::with_capacity(257);
    for (symbol, &(len, code)) in httlib_huffman::encoder::table::ENCODE_TABLE
        .iter()
        .enumerate()
    {
        let (len, symbol) = (u32::from(len), symbol as u16);
        all.push((code << (32 - len), len, symbol));
        if len <= SHORT_BITS {
            let first = (code << (SHORT_BITS - len)) as usize;
            let entry = (len as u16) << 8 | symbol;
            let slots = short.get_mut(first..first + (1 << (SHORT_BITS - len)));
            slots.into_iter().flatten().for_each(|slot| *slot = entry);
        }
    }
    all.sort_unstable();
    Huffman { short, all }
});

impl Huffman {
    /// The `(symbol, length)` of the code `bits` (msb first) starts with, if any.
    fn long_code(&self, bits: u32) -> Option<(u16, u32)> {
        let after = self.all.partition_point(|&(code, _, _)| code <= bits);
        let &(code, len, symbol) = self.all.get(after.checked_sub(1)?)?;
        let mask = u32::MAX << (32 - len);
        (bits & mask == code).then_some((symbol, len))
    }
}

/// Decodes the Huffman string `src` onto the end of `out`, rejecting EOS and bad padding.
fn huffman_decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let table = &*HUFFMAN;
    out.reserve(src.len() / 5 * 8 + 8); // codes are at least 5 bits long
    // The unread input, msb-aligned: the top `bits` bits of `acc`, zeros below them.
    let (mut acc, mut bits, mut pos) = (0u64, 0u32, 0usize);
    loop {
        if bits <= 32
            && let Some(&[a, b, c, d]) = src.get(pos..pos + 4)
        {
            acc |= u64::from(u32::from_be_bytes([a, b, c, d])) << (32 - bits);
            bits += 32;
            pos += 4;
        }
        while bits <= 56 {
            let Some(&octet) = src.get(pos) else { break };
            acc |= u64::from(octet) << (56 - bits);
            bits += 8;
            pos += 1;
        }
        if bits == 0 {
            return Ok(());
        }
        let entry = table
            .short
            .get((acc >> (64 - SHORT_BITS)) as usize)
            .copied()
            .unwrap_or(0);
        let code = match entry {
            0 => table.long_code((acc >> 32) as u32),
            _ => Some((entry & 0xff, u32::from(entry >> 8))),
        };
        match code {
            Some((256, len)) if len <= bits => return Err(HpackError::HuffmanEos),
            Some((symbol, len)) if len <= bits => {
                out.push(symbol as u8);
                acc <<= len;
                bits -= len;
            }
            // The rest is shorter than the code it starts: it must be padding, a prefix of EOS.
            _ if acc.leading_ones() < bits => return Err(HpackError::HuffmanBadPadding),
            _ if bits > 7 => return Err(HpackError::HuffmanPaddingTooLong(bits)),
            _ => return Ok(()),
        }
    }
}

/// Appends an integer with a `prefix`-bit prefix; `flags` fills the bits above the prefix.
fn encode_int(out: &mut Vec<u8>, flags: u8, prefix: u32, value: usize) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// Appends a raw (not Huffman-coded) string literal.
fn encode_str(out: &mut Vec<u8>, s: &[u8]) {
    encode_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// Appends the HPACK encoding of one header field to `out` without touching any dynamic table
/// (literal header field without indexing; the name as a static-table index when the static
/// table has it, else as a literal; no Huffman). Names must be lower-case.
pub fn encode_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    match STATIC_TABLE.iter().position(|&(known, _)| known == name) {
        Some(i) => encode_int(out, 0, 4, i + 1),
        None => {
            out.push(0);
            encode_str(out, name);
        }
    }
    encode_str(out, value);
}

/// A dynamic table size update (RFC 7541 section 6.3): must open a header block.
pub fn encode_size_update(out: &mut Vec<u8>, size: usize) {
    encode_int(out, 0x20, 5, size);
}

/// `:status 200` etc: the static-table index when there is one (200, 204, 206, 304, 400, 404,
/// 500), else a literal with the `:status` name index.
pub fn encode_status(out: &mut Vec<u8>, status: u16) {
    let index = match status {
        200 => 8,
        204 => 9,
        206 => 10,
        304 => 11,
        400 => 12,
        404 => 13,
        500 => 14,
        _ => {
            let mut digits = [0u8; 5];
            let mut start = digits.len();
            let mut rest = status;
            while start == digits.len() || rest > 0 {
                start -= 1;
                if let Some(digit) = digits.get_mut(start) {
                    *digit = b'0' + (rest % 10) as u8;
                }
                rest /= 10;
            }
            encode_int(out, 0, 4, 8);
            encode_str(out, digits.get(start..).unwrap_or_default());
            return;
        }
    };
    out.push(0x80 | index);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::HpackError::*;
    use super::*;
    use std::convert::Infallible;

    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    fn decode_all(dec: &mut Decoder, block: &[u8]) -> Result<Fields, HpackError> {
        let mut out = Vec::new();
        let result = dec.decode(block, |name, value| {
            out.push((name.to_vec(), value.to_vec()));
            Ok::<(), Infallible>(())
        });
        match result {
            Ok(()) => Ok(out),
            Err(DecodeError::Hpack(e)) => Err(e),
            Err(DecodeError::Field(never)) => match never {},
        }
    }

    fn ok(dec: &mut Decoder, block: &[u8]) -> Fields {
        decode_all(dec, block).unwrap()
    }

    /// The error a fresh decoder (4096 octets) reports for `block`.
    fn err(block: &[u8]) -> HpackError {
        decode_all(&mut Decoder::new(4096), block).unwrap_err()
    }

    /// The dynamic table, newest first; also checks the size accounting.
    fn table(dec: &Decoder) -> Fields {
        let to_vecs = |(n, v): (&[u8], &[u8])| (n.to_vec(), v.to_vec());
        let fields: Fields = dec.entries.iter().map(Entry::field).map(to_vecs).collect();
        let size: usize = fields.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
        assert_eq!(dec.size, size);
        assert!(dec.size <= dec.max_size);
        fields
    }

    fn fields(list: &[(&str, &str)]) -> Fields {
        let to_vecs = |(n, v): &(&str, &str)| (n.as_bytes().to_vec(), v.as_bytes().to_vec());
        list.iter().map(to_vecs).collect()
    }

    fn hex(s: &str) -> Vec<u8> {
        let octet = |i| u8::from_str_radix(&s[i..i + 2], 16).unwrap();
        (0..s.len()).step_by(2).map(octet).collect()
    }

    fn huffman(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        httlib_huffman::encode(s, &mut out).unwrap();
        out
    }

    /// A string literal, Huffman-coded or raw.
    fn put_str(out: &mut Vec<u8>, s: &[u8], use_huffman: bool) {
        if use_huffman {
            let coded = huffman(s);
            encode_int(out, 0x80, 7, coded.len());
            out.extend_from_slice(&coded);
        } else {
            encode_str(out, s);
        }
    }

    /// xorshift64: deterministic test data.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn chance(&mut self, percent: usize) -> bool {
            self.below(100) < percent
        }
        /// Mostly printable ASCII, sometimes any octets.
        fn bytes(&mut self, len: usize) -> Vec<u8> {
            let (base, span) = if self.chance(80) {
                (b'!', 94)
            } else {
                (0, 256)
            };
            (0..len).map(|_| base + self.below(span) as u8).collect()
        }
        /// A field: often from small pools (so tables get hits), sometimes new or long.
        fn field(&mut self) -> (Vec<u8>, Vec<u8>) {
            const NAMES: [&str; 6] = [":path", "content-type", "x-request-id", "te", "x-b3", "x"];
            let name = match self.below(10) {
                0 => format!("x-new-{}", self.below(1000)).into_bytes(),
                _ => NAMES[self.below(NAMES.len())].as_bytes().to_vec(),
            };
            let len = match self.below(10) {
                0..=4 => return (name, format!("v{}", self.below(6)).into_bytes()),
                5 => 300 + self.below(3000),
                _ => self.below(60),
            };
            (name, self.bytes(len))
        }
    }

    /// The remembered Huffman string: the same literal again decodes alike, a different one of
    /// the same length is decoded anew, and a name literal does not confuse the value after it.
    #[test]
    fn a_repeated_huffman_literal_decodes_alike() {
        let path = |p: &[u8]| {
            let mut block = vec![0x04];
            put_str(&mut block, p, true);
            block
        };
        let mut dec = Decoder::new(4096);
        let check = b"/envoy.service.auth.v3.Authorization/Check";
        let other = b"/envoy.service.auth.v3.Authorization/Chuck";
        assert_eq!(huffman(check).len(), huffman(other).len());
        for p in [&check[..], check, other, check, other, other] {
            assert_eq!(
                ok(&mut dec, &path(p)),
                vec![(b":path".to_vec(), p.to_vec())]
            );
        }
        // A literal name then a value with the same Huffman bytes as the name.
        let mut block = vec![0x00];
        put_str(&mut block, b"x-same", true);
        put_str(&mut block, b"x-same", true);
        assert_eq!(ok(&mut dec, &block), fields(&[("x-same", "x-same")]));
        assert_eq!(
            ok(&mut dec, &path(check)),
            fields(&[(":path", std::str::from_utf8(check).unwrap())])
        );
    }

    #[test]
    fn static_table_agrees_with_loona() {
        let mut theirs = loona_hpack::Decoder::new();
        for index in 1..=61u8 {
            let block = [0x80 | index];
            let ours = ok(&mut Decoder::new(4096), &block);
            assert_eq!(ours, theirs.decode(&block).unwrap(), "index {index}");
        }
    }

    #[test]
    fn rfc_7541_c4_requests_with_huffman() {
        let mut dec = Decoder::new(4096);
        let first = ok(&mut dec, &hex("828684418cf1e3c2e5f23a6ba0ab90f4ff"));
        let expected = [(":method", "GET"), (":scheme", "http"), (":path", "/")];
        assert_eq!(first[..3], fields(&expected));
        assert_eq!(first[3], fields(&[(":authority", "www.example.com")])[0]);
        ok(&mut dec, &hex("828684be5886a8eb10649cbf"));
        let third = ok(
            &mut dec,
            &hex("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf"),
        );
        assert_eq!(third[4], fields(&[("custom-key", "custom-value")])[0]);
        let expected = [
            ("custom-key", "custom-value"),
            ("cache-control", "no-cache"),
            (":authority", "www.example.com"),
        ];
        assert_eq!(table(&dec), fields(&expected));
        assert_eq!(dec.size, 164);
    }

    const C6: [&str; 3] = [
        "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b97c8e9ae82ae43d3",
        "4883640effc1c0bf",
        "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
    ];

    #[test]
    fn rfc_7541_c6_responses_with_eviction() {
        let mut dec = Decoder::new(256);
        ok(&mut dec, &hex(C6[0]));
        let second = ok(&mut dec, &hex(C6[1]));
        let expected = [
            (":status", "307"),
            ("cache-control", "private"),
            ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
            ("location", "https://www.example.com"),
        ];
        assert_eq!(second, fields(&expected));
        assert_eq!(table(&dec).len(), 4);
        let third = ok(&mut dec, &hex(C6[2]));
        let cookie = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
        assert_eq!(third[5], fields(&[("set-cookie", cookie)])[0]);
        let date = "Mon, 21 Oct 2013 20:13:22 GMT";
        let expected = [
            ("set-cookie", cookie),
            ("content-encoding", "gzip"),
            ("date", date),
        ];
        assert_eq!(table(&dec), fields(&expected));
        assert_eq!(dec.size, 215);
    }

    /// Many blocks from loona's encoder (incremental indexing, its own dynamic table) on one
    /// connection, with table size changes signalled by size updates.
    #[test]
    fn round_trip_with_loona_encoder() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut enc = loona_hpack::Encoder::new();
        let mut dec = Decoder::new(4096);
        let mut most_entries = 0;
        for round in 0..400 {
            let mut block = Vec::new();
            if round % 37 == 36 {
                if rng.chance(50) {
                    encode_int(&mut block, 0x20, 5, 0); // the smallest size in between
                    enc.set_max_table_size(0);
                }
                let size = [0, 100, 256, 1024, 4096][rng.below(5)];
                encode_int(&mut block, 0x20, 5, size);
                enc.set_max_table_size(size);
            }
            let list: Fields = (0..1 + rng.below(15)).map(|_| rng.field()).collect();
            block.extend(enc.encode(list.iter().map(|(n, v)| (&n[..], &v[..]))));
            assert_eq!(ok(&mut dec, &block), list, "round {round}");
            most_entries = most_entries.max(table(&dec).len());
        }
        assert!(most_entries > 10, "the dynamic table was barely used");
    }

    /// Random blocks using every representation, Huffman or raw strings, decoded by us and by
    /// loona's decoder; both must agree, also on rejecting out-of-range indexes.
    #[test]
    fn differential_against_loona_decoder() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let new_pair = || {
            let mut theirs = loona_hpack::Decoder::new();
            theirs.set_max_allowed_table_size(4096);
            (Decoder::new(4096), theirs)
        };
        let (mut ours, mut theirs) = new_pair();
        let (mut errors, mut oks) = (0, 0);
        for round in 0..600 {
            let mut block = Vec::new();
            if rng.chance(10) {
                encode_int(&mut block, 0x20, 5, rng.below(4097));
            }
            let mut entries = ours.entries.len();
            for _ in 0..1 + rng.below(12) {
                let (name, value) = rng.field();
                let index = match rng.chance(1) {
                    true => 62 + entries + rng.below(5),
                    false => 1 + rng.below(61 + entries),
                };
                let kind = rng.below(7);
                if kind == 0 {
                    encode_int(&mut block, 0x80, 7, index);
                    continue;
                }
                let name_index = if rng.chance(50) { index } else { 0 };
                let (flags, prefix) = [(0x40, 6), (0x00, 4), (0x10, 4)][kind % 3];
                encode_int(&mut block, flags, prefix, name_index);
                if name_index == 0 {
                    put_str(&mut block, &name, rng.chance(50));
                }
                put_str(&mut block, &value, rng.chance(50));
                entries += usize::from(flags == 0x40);
            }
            match (decode_all(&mut ours, &block), theirs.decode(&block)) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a, b, "round {round}");
                    oks += 1;
                }
                (Err(_), Err(_)) => {
                    errors += 1;
                    (ours, theirs) = new_pair();
                }
                (a, b) => panic!("round {round}: we say {a:?}, loona says {b:?}"),
            }
        }
        assert!(oks > 400 && errors > 5, "{oks} ok, {errors} errors");
    }

    fn decode_huffman(src: &[u8]) -> Result<Vec<u8>, HpackError> {
        let mut out = b"x".to_vec(); // decoding appends
        huffman_decode(src, &mut out)?;
        assert_eq!(out.remove(0), b'x');
        Ok(out)
    }

    #[test]
    fn huffman_decodes_every_byte_and_random_strings() {
        for byte in 0..=255u8 {
            assert_eq!(decode_huffman(&huffman(&[byte])), Ok(vec![byte]));
            assert_eq!(decode_huffman(&huffman(&[byte; 7])), Ok(vec![byte; 7]));
        }
        let all: Vec<u8> = (0..=255).chain((0..=255).rev()).collect();
        assert_eq!(decode_huffman(&huffman(&all)), Ok(all));
        assert_eq!(decode_huffman(&[]), Ok(vec![]));
        let rfc = hex("f1e3c2e5f23a6ba0ab90f4ff");
        assert_eq!(decode_huffman(&rfc), Ok(b"www.example.com".to_vec()));
        let mut rng = Rng(42);
        for _ in 0..2000 {
            let len = rng.below(80);
            let s = rng.bytes(len);
            assert_eq!(decode_huffman(&huffman(&s)), Ok(s));
        }
    }

    #[test]
    fn huffman_rejects_eos_and_bad_padding() {
        let cases: [(&[u8], HpackError); 8] = [
            (&[0xff, 0xff, 0xff, 0xff], HuffmanEos), // EOS is 30 ones
            (&[0x1f, 0xff, 0xff, 0xff, 0xff], HuffmanEos), // 'a' (00011), EOS, padding
            (&[0xff, 0xff, 0xff, 0xfc, 0x1f], HuffmanEos), // EOS, '0' (00000), padding
            (&[0xff], HuffmanPaddingTooLong(8)),
            (&[0x1f, 0xff], HuffmanPaddingTooLong(11)), // 'a', 11 ones
            (&[0x1e], HuffmanBadPadding),               // 'a', 110
            (&[0x18], HuffmanBadPadding),               // 'a', 000
            (&[0xfe], HuffmanBadPadding),               // 7 ones and a zero
        ];
        for (src, expected) in cases {
            assert_eq!(decode_huffman(src), Err(expected), "{src:x?}");
        }
        // Exactly 7 ones of padding ("0 %" is 17 bits) is fine; so is none.
        assert_eq!(decode_huffman(&[0x02, 0x8a, 0xff]), Ok(b"0 %".to_vec()));
        assert_eq!(decode_huffman(&[0x00, 0x3f]), Ok(b"00".to_vec()));
        assert_eq!(err(&[0x04, 0x81, 0xff]), HuffmanPaddingTooLong(8)); // via the decoder
    }

    #[test]
    fn every_representation() {
        let mut dec = Decoder::new(4096);
        let mut block = vec![0x82]; // indexed, static
        block.extend([0x44, 0x02, b'/', b'a']); // incremental indexing, name :path (4)
        block.push(0x40); // incremental indexing, literal name
        put_str(&mut block, b"x-k", true);
        put_str(&mut block, b"v1", false);
        block.extend([0xbe, 0xbf]); // indexed, dynamic 62 (x-k) and 63 (:path)
        block.extend([0x0f, 0x2f, 0x01, b'z']); // without indexing, name index 62 (15 + 47)
        block.push(0x00); // without indexing, literal name
        put_str(&mut block, b"x-w", false);
        put_str(&mut block, b"w", true);
        block.extend([0x1f, 0x10, 0x01, b'n']); // never indexed, name index 31 (content-type)
        block.push(0x10); // never indexed, literal name
        put_str(&mut block, b"x-n", true);
        put_str(&mut block, b"", true);
        let expected = [
            (":method", "GET"),
            (":path", "/a"),
            ("x-k", "v1"),
            ("x-k", "v1"),
            (":path", "/a"),
            ("x-k", "z"),
            ("x-w", "w"),
            ("content-type", "n"),
            ("x-n", ""),
        ];
        assert_eq!(ok(&mut dec, &block), fields(&expected));
        assert_eq!(table(&dec), fields(&[("x-k", "v1"), (":path", "/a")]));
    }

    const TWO_ENTRIES: [u8; 10] = [0x40, 1, b'a', 1, b'b', 0x40, 1, b'c', 1, b'd'];

    #[test]
    fn size_updates() {
        let mut dec = Decoder::new(4096);
        ok(&mut dec, &TWO_ENTRIES);
        // Two updates at the start: to 0 (empties the table), then to 4096.
        let block = [0x20, 0x3f, 0xe1, 0x1f, 0xbe];
        let expected = IndexOutOfRange {
            index: 62,
            entries: 0,
        };
        assert_eq!(decode_all(&mut dec, &block), Err(expected));
        let mut dec = Decoder::new(4096);
        ok(&mut dec, &[0x3f, 0x15, 0x82]); // one update, to 52: room for one small entry
        ok(&mut dec, &TWO_ENTRIES);
        assert_eq!(table(&dec), fields(&[("c", "d")]));
        assert_eq!(ok(&mut dec, &[0x20]), Fields::new()); // nothing but an update
        assert!(table(&dec).is_empty());
        assert_eq!(err(&[0x20, 0x20, 0x20, 0x82]), TooManySizeUpdates);
        assert_eq!(err(&[0x82, 0x20]), SizeUpdateAfterField);
        assert_eq!(err(&[0x82, 0x3f, 0x01, 0x82]), SizeUpdateAfterField);
        let too_large = [0x3f, 0xe2, 0x1f]; // 4097
        assert_eq!(
            err(&too_large),
            TableSizeTooLarge {
                size: 4097,
                max: 4096
            }
        );
        let message = "dynamic table size update to 4097 exceeds the advertised maximum of 4096";
        assert_eq!(err(&too_large).to_string(), message);
        ok(&mut Decoder::new(4097), &too_large);
    }

    #[test]
    fn bad_indexes() {
        assert_eq!(err(&[0x80]), IndexZero);
        let mut dec = Decoder::new(4096);
        ok(&mut dec, &[&TWO_ENTRIES[..], &[0x40, 1, b'e', 0]].concat());
        assert_eq!(ok(&mut dec, &[0xc0]), fields(&[("a", "b")])); // 64, the oldest
        let error = decode_all(&mut dec, &[0xc6]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "index 70 is beyond the dynamic table (3 entries)"
        );
        // A literal whose name index is out of range, in each literal form: 66, 68, 69.
        let blocks = [
            ([0x7f, 0x03, 0x00], 66),
            ([0x0f, 0x35, 0x00], 68),
            ([0x1f, 0x36, 0x00], 69),
        ];
        for (block, index) in blocks {
            let expected = IndexOutOfRange { index, entries: 3 };
            assert_eq!(decode_all(&mut dec, &block), Err(expected));
        }
        // In range: 64 with incremental indexing, 18 (accept-ranges) without.
        let block = [0x7f, 0x01, 0x00, 0x0f, 0x03, 0x00];
        assert_eq!(
            ok(&mut dec, &block),
            fields(&[("a", ""), ("accept-ranges", "")])
        );
    }

    #[test]
    fn eviction() {
        // Room for 100 octets: entries of 32 + 1 + 16 = 49 fit twice.
        let entry = |name: u8| [&[0x40, 1, name, 16][..], &[b'.'; 16]].concat();
        let mut dec = Decoder::new(100);
        ok(&mut dec, &[entry(b'a'), entry(b'b'), entry(b'c')].concat());
        let dots = "................";
        assert_eq!(table(&dec), fields(&[("c", dots), ("b", dots)])); // 'a', the oldest, went
        // The new entry (37 octets) takes its name from the entry it evicts (63, 'b').
        let block = [0x7f, 0x00, 4, b'y', b'y', b'y', b'y'];
        assert_eq!(ok(&mut dec, &block), fields(&[("b", "yyyy")]));
        assert_eq!(table(&dec), fields(&[("b", "yyyy"), ("c", dots)]));
        // An entry one octet larger than the table empties it and is not stored.
        assert_eq!(
            ok(&mut dec, &[&[0x40, 1, b'n', 68][..], &[b'z'; 68]].concat()).len(),
            1
        );
        assert!(table(&dec).is_empty());
        // An entry of exactly the table size fits.
        ok(&mut dec, &[&[0x40, 1, b'n', 67][..], &[b'e'; 67]].concat());
        assert_eq!((table(&dec).len(), dec.size), (1, 100));
    }

    #[test]
    fn integers() {
        let read = |bytes: &[u8], prefix| read_int(bytes, &mut 0, prefix);
        assert_eq!(read(&[0x0a], 5), Ok(10));
        assert_eq!(read(&[0x1f, 0x9a, 0x0a], 5), Ok(1337));
        assert_eq!(read(&[0x7f, 0x80, 0x80, 0x80, 0x80, 0x00], 7), Ok(127)); // 4 redundant
        assert_eq!(
            read(&[0x0f, 0xf0, 0xff, 0xff, 0xff, 0x0f], 4),
            Ok(u32::MAX as usize)
        );
        assert_eq!(
            read(&[0x0f, 0xf1, 0xff, 0xff, 0xff, 0x0f], 4),
            Err(IntegerOverflow)
        );
        assert_eq!(
            read(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0x7f], 7),
            Err(IntegerOverflow)
        );
        assert_eq!(
            read(&[0x7f, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00], 7),
            Err(IntegerOverflow)
        );
        assert_eq!(read(&[0x7f, 0xff], 7), Err(Truncated));
        assert_eq!(read(&[], 7), Err(Truncated));
        assert_eq!(
            err(&[0x3f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]),
            IntegerOverflow
        );
        assert_eq!(err(&[0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0x07]), Truncated); // 2^31 octets
        let max = u32::MAX as usize;
        for (value, prefix) in [(0, 7), (127, 7), (128, 7), (15, 4), (300_000, 5), (max, 6)] {
            let mut out = Vec::new();
            encode_int(&mut out, 0, prefix, value);
            assert_eq!(read(&out, prefix), Ok(value));
        }
        let mut out = Vec::new();
        encode_int(&mut out, 0, 6, max + 1);
        assert_eq!(read(&out, 6), Err(IntegerOverflow));
    }

    #[test]
    fn string_length_limit() {
        let mut dec = Decoder::new(4096).with_max_string_len(10);
        let mut block = vec![0x00];
        put_str(&mut block, b"x-ten-char", false);
        put_str(&mut block, b"0123456789", true);
        assert_eq!(
            ok(&mut dec, &block),
            fields(&[("x-ten-char", "0123456789")])
        );
        for use_huffman in [false, true] {
            let mut block = vec![0x00];
            put_str(&mut block, b"x-eleven-ch", use_huffman);
            put_str(&mut block, b"v", false);
            let error = decode_all(&mut dec, &block).unwrap_err();
            assert_eq!(error, StringTooLong { len: 11, max: 10 });
            let message = "string of 11 octets exceeds the limit of 10 octets";
            assert_eq!(error.to_string(), message);
        }
    }

    #[test]
    fn field_errors_stop_decoding() {
        let mut seen = 0;
        let result = Decoder::new(4096).decode(&[0x82, 0x84, 0x86], |name, _| {
            seen += 1;
            if name == b":path" {
                Err("no paths")
            } else {
                Ok(())
            }
        });
        assert_eq!(seen, 2);
        let error = result.unwrap_err();
        assert!(matches!(error, DecodeError::Field("no paths")));
        assert_eq!(error.to_string(), "header field rejected: no paths");
    }

    /// Decodes `blocks` on one connection, then `last` (maybe damaged); whether `last` decoded.
    fn replay(blocks: &[Vec<u8>], last: &[u8]) -> bool {
        let mut dec = Decoder::new(4096);
        blocks.iter().for_each(|block| _ = ok(&mut dec, block));
        let decoded = decode_all(&mut dec, last).is_ok();
        table(&dec);
        decoded
    }

    #[test]
    fn truncations_and_corruptions_never_panic() {
        let mut rng = Rng(7);
        let mut enc = loona_hpack::Encoder::new();
        let mut blocks: Vec<Vec<u8>> = C6.iter().map(|h| hex(h)).collect();
        for _ in 0..4 {
            let list: Fields = (0..8).map(|_| rng.field()).collect();
            blocks.push(enc.encode(list.iter().map(|(n, v)| (&n[..], &v[..]))));
        }
        let mut failures = 0;
        for sequence in [&blocks[..3], &blocks[3..]] {
            for (i, block) in sequence.iter().enumerate() {
                for len in 0..block.len() {
                    failures += usize::from(!replay(&sequence[..i], &block[..len]));
                }
                for _ in 0..400 {
                    let mut damaged = block.clone();
                    damaged[rng.below(block.len())] = rng.next() as u8;
                    failures += usize::from(!replay(&sequence[..i], &damaged));
                }
            }
        }
        assert!(
            failures > 100,
            "only {failures} damaged blocks were rejected"
        );
        for _ in 0..2000 {
            let len = rng.below(40);
            _ = decode_all(&mut Decoder::new(4096), &rng.bytes(len));
        }
    }

    #[test]
    fn encoder_output_decodes() {
        let long = "v".repeat(300);
        let list = [
            (":path", "/envoy.service.auth.v3.Authorization/Check"),
            ("content-type", "application/grpc"),
            ("grpc-status", "0"),
            ("grpc-message", ""),
            ("x-a-name-that-is-somewhat-long", long.as_str()),
            (":authority", ""),
            ("www-authenticate", "Bearer"),
        ];
        let statuses = || (100..=599).chain([0, 7, 65535]);
        let mut block = Vec::new();
        statuses().for_each(|status| encode_status(&mut block, status));
        for (name, value) in list {
            encode_field(&mut block, name.as_bytes(), value.as_bytes());
        }
        let status = |s: u16| (b":status".to_vec(), s.to_string().into_bytes());
        let mut expected: Fields = statuses().map(status).collect();
        expected.extend(fields(&list));
        let mut dec = Decoder::new(4096);
        assert_eq!(ok(&mut dec, &block), expected);
        assert!(table(&dec).is_empty());
        assert_eq!(
            loona_hpack::Decoder::new().decode(&block).unwrap(),
            expected
        );
        let mut out = Vec::new();
        encode_status(&mut out, 200);
        encode_status(&mut out, 404);
        encode_field(&mut out, b":path", b"/");
        assert_eq!(out, [0x88, 0x8d, 0x04, 0x01, b'/']);
    }
}
