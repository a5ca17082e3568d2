//! Packed tables: the rows of one table that one commit writes side by
//! side are kept as one stored row, a chunk, instead of one B-tree entry
//! each.
//!
//! A persistent session's queue is the case: a commit adds the few
//! messages each session was sent since the last one, and removes those
//! its client acknowledged since, so a session costs every commit an
//! insert per new message and a removal per acknowledged one, each
//! copying a page of the tree. Packed, it costs one insert for the new
//! chunk and one rewrite (or removal) of the chunk its acknowledgements
//! fall in.
//!
//! A chunk is stored under the key of its first row when it was made;
//! it covers the keys from there to its last row. Chunks never overlap:
//! a row is written into the chunk that covers its key, or else into a
//! new chunk made in the gap between two chunks. A new chunk holds rows
//! of one owner only (the first [`OWNER`] bytes of the key: a session's
//! incarnation), and at most [`MAX_ROWS`] rows or [`MAX_BYTES`] bytes.
//!
//! Value layout: `u32` count, then per row `u16` key length, key, `u32`
//! value length, value (little endian), rows in key order.

use redb::{ReadableTable, Table};
use std::collections::BTreeMap;
use std::ops::Bound;

/// The bytes of a key that name its owner: rows of two owners never
/// share a new chunk.
pub const OWNER: usize = 8;
/// Most rows a new chunk takes.
pub const MAX_ROWS: usize = 64;
/// Most bytes of rows a new chunk takes (one row may pass it alone).
pub const MAX_BYTES: usize = 32 * 1024;

/// The stored table of packed table `table`: a name of its own, so a file
/// written before the table was packed is not misread.
pub fn physical(table: &str) -> String {
    format!("{table}#packed")
}

type Err = String;
/// A stored `(key, value)`, as the store's readers get it.
type Row = (Vec<u8>, Vec<u8>);
/// A stored row, borrowed.
type RowRef<'a> = (&'a [u8], &'a [u8]);
/// A write of one key (`None`: removed), borrowed.
type Edit<'a> = (&'a [u8], Option<&'a [u8]>);

fn owner(key: &[u8]) -> &[u8] {
    &key[..key.len().min(OWNER)]
}

/// Walks the rows of a chunk in key order, `f` seeing each; checks that
/// the chunk holds exactly what its header says.
fn walk<'a>(bytes: &'a [u8], mut f: impl FnMut(RowRef<'a>)) -> Result<usize, Err> {
    let bad = || format!("a packed row of {} bytes cannot be read", bytes.len());
    let take = |at: &mut usize, n: usize| -> Result<&'a [u8], Err> {
        let end = at
            .checked_add(n)
            .filter(|e| *e <= bytes.len())
            .ok_or_else(bad)?;
        let s = &bytes[*at..end];
        *at = end;
        Ok(s)
    };
    let mut at = 0usize;
    let n = u32::from_le_bytes(take(&mut at, 4)?.try_into().map_err(|_| bad())?) as usize;
    for _ in 0..n {
        let kl = u16::from_le_bytes(take(&mut at, 2)?.try_into().map_err(|_| bad())?) as usize;
        let k = take(&mut at, kl)?;
        let vl = u32::from_le_bytes(take(&mut at, 4)?.try_into().map_err(|_| bad())?) as usize;
        let v = take(&mut at, vl)?;
        f((k, v));
    }
    if at != bytes.len() {
        return Err(bad());
    }
    Ok(n)
}

/// The rows of a chunk, in key order.
fn decode(bytes: &[u8]) -> Result<Vec<RowRef<'_>>, Err> {
    let mut out = Vec::new();
    walk(bytes, |r| out.push(r))?;
    Ok(out)
}

/// The last key of a chunk.
fn last(bytes: &[u8]) -> Result<Vec<u8>, Err> {
    let mut last = None;
    walk(bytes, |(k, _)| last = Some(k))?;
    last.map(<[u8]>::to_vec)
        .ok_or_else(|| "an empty packed row".to_string())
}

/// Encodes rows given in key order.
fn encode<'a>(rows: impl IntoIterator<Item = RowRef<'a>>) -> Result<Vec<u8>, Err> {
    let mut out = vec![0u8; 4];
    let mut n = 0u32;
    for (k, v) in rows {
        let kl = u16::try_from(k.len()).map_err(|_| format!("a key of {} bytes", k.len()))?;
        let vl = u32::try_from(v.len()).map_err(|_| format!("a value of {} bytes", v.len()))?;
        out.extend_from_slice(&kl.to_le_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(&vl.to_le_bytes());
        out.extend_from_slice(v);
        n += 1;
    }
    out[..4].copy_from_slice(&n.to_le_bytes());
    Ok(out)
}

/// Where a key falls: in the chunk stored at `start` (whose last key is
/// `last`, and whose stored value is `value`: read once, handed to
/// [`rewrite`]), or in the gap before the chunk stored at `next` (`None`:
/// no chunk follows).
enum Span {
    Chunk {
        start: Vec<u8>,
        last: Vec<u8>,
        value: Vec<u8>,
    },
    Gap {
        next: Option<Vec<u8>>,
        id: u64,
    },
}

impl Span {
    fn holds(&self, key: &[u8]) -> bool {
        match self {
            Span::Chunk { start, last, .. } => start.as_slice() <= key && key <= last.as_slice(),
            // Only asked of keys after the one the gap was found for.
            Span::Gap { next, .. } => next.as_deref().is_none_or(|n| key < n),
        }
    }
}

fn span(t: &Table<&[u8], &[u8]>, key: &[u8], gaps: &mut u64) -> Result<Span, Err> {
    if let Some(row) = t
        .range::<&[u8]>(..=key)
        .map_err(|e| e.to_string())?
        .next_back()
    {
        let (s, v) = row.map_err(|e| e.to_string())?;
        let l = last(v.value())?;
        if l.as_slice() >= key {
            return Ok(Span::Chunk {
                start: s.value().to_vec(),
                last: l,
                value: v.value().to_vec(),
            });
        }
    }
    let next = match t
        .range::<&[u8]>((Bound::Excluded(key), Bound::Unbounded))
        .map_err(|e| e.to_string())?
        .next()
    {
        Some(row) => Some(row.map_err(|e| e.to_string())?.0.value().to_vec()),
        None => None,
    };
    *gaps += 1;
    Ok(Span::Gap { next, id: *gaps })
}

/// Rewrites the chunk stored at `start`, whose stored value is `old`,
/// with `edits` (key order; `None` removes) merged in, or removes it when
/// no row is left.
fn rewrite(
    t: &mut Table<&[u8], &[u8]>,
    start: &[u8],
    old: &[u8],
    edits: &[Edit<'_>],
) -> Result<(), Err> {
    let rows = decode(old)?;
    let mut merged: Vec<RowRef<'_>> = Vec::with_capacity(rows.len() + edits.len());
    let (mut a, mut b) = (rows.iter().peekable(), edits.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (Some((ka, va)), Some((kb, vb))) => {
                if ka < kb {
                    merged.push((ka, va));
                    a.next();
                } else {
                    if let Some(v) = vb {
                        merged.push((kb, v));
                    }
                    if ka == kb {
                        a.next();
                    }
                    b.next();
                }
            }
            (Some((ka, va)), None) => {
                merged.push((ka, va));
                a.next();
            }
            (None, Some((kb, vb))) => {
                if let Some(v) = vb {
                    merged.push((kb, v));
                }
                b.next();
            }
            (None, None) => break,
        }
    }
    if merged.is_empty() {
        t.remove(start).map_err(|e| e.to_string())?;
    } else {
        let value = encode(merged)?;
        t.insert(start, value.as_slice())
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Applies one commit's changes to packed table `t`: the range removals
/// first, then the last write of each key (`None`: removed), in key
/// order.
pub fn apply(
    t: &mut Table<&[u8], &[u8]>,
    ranges: &[(&[u8], &[u8])],
    keys: &BTreeMap<&[u8], Option<&[u8]>>,
) -> Result<(), Err> {
    for (from, to) in ranges {
        // The chunks the range touches, each read once: the one that
        // covers `from`, then those stored inside the range.
        let mut chunks: Vec<Row> = Vec::new();
        let mut gaps = 0;
        if let Span::Chunk { start, value, .. } = span(t, from, &mut gaps)? {
            chunks.push((start, value));
        }
        for row in t.range::<&[u8]>(*from..*to).map_err(|e| e.to_string())? {
            let (s, v) = row.map_err(|e| e.to_string())?;
            if chunks.last().map(|c| c.0.as_slice()) != Some(s.value()) {
                chunks.push((s.value().to_vec(), v.value().to_vec()));
            }
        }
        for (start, old) in chunks {
            let gone: Vec<Edit<'_>> = decode(&old)?
                .into_iter()
                .filter(|(k, _)| *k >= *from && *k < *to)
                .map(|(k, _)| (k, None))
                .collect();
            if !gone.is_empty() {
                rewrite(t, &start, &old, &gone)?;
            }
        }
    }
    // Which chunk (or gap) each write falls in, as the table was before
    // this commit.
    // A chunk's edits, with its stored value (taken from the span the
    // first time a write falls in it).
    let mut edits: BTreeMap<Vec<u8>, (Vec<u8>, Vec<Edit<'_>>)> = BTreeMap::new();
    let mut fresh: Vec<(u64, &[u8], &[u8])> = Vec::new();
    let mut gaps = 0u64;
    let mut cur: Option<Span> = None;
    for (k, v) in keys {
        let mut s = match cur.take() {
            Some(s) if s.holds(k) => s,
            _ => span(t, k, &mut gaps)?,
        };
        match &mut s {
            Span::Chunk { start, value, .. } => edits
                .entry(start.clone())
                .or_insert_with(|| (std::mem::take(value), Vec::new()))
                .1
                .push((k, *v)),
            Span::Gap { id, .. } => {
                if let Some(v) = v {
                    fresh.push((*id, k, v));
                }
            }
        }
        cur = Some(s);
    }
    for (start, (old, e)) in &edits {
        rewrite(t, start, old, e)?;
    }
    // New chunks: runs of one gap and one owner, bounded in size.
    let mut i = 0;
    while i < fresh.len() {
        let (gap, first, _) = fresh[i];
        let mut j = i;
        let mut bytes = 0usize;
        while j < fresh.len()
            && fresh[j].0 == gap
            && owner(fresh[j].1) == owner(first)
            && j - i < MAX_ROWS
            && (j == i || bytes + fresh[j].2.len() <= MAX_BYTES)
        {
            bytes += fresh[j].1.len() + fresh[j].2.len();
            j += 1;
        }
        let value = encode(fresh[i..j].iter().map(|(_, k, v)| (*k, *v)))?;
        t.insert(first, value.as_slice())
            .map_err(|e| e.to_string())?;
        i = j;
    }
    Ok(())
}

/// The rows of packed table `t` with `from <= key < to` (`None`: no
/// bound), in key order.
pub fn rows<T: ReadableTable<&'static [u8], &'static [u8]>>(
    t: &T,
    from: Option<&[u8]>,
    to: Option<&[u8]>,
) -> Result<Vec<Row>, Err> {
    let inside = |k: &[u8]| from.is_none_or(|f| k >= f) && to.is_none_or(|e| k < e);
    let mut out = Vec::new();
    let mut take = |v: &[u8]| -> Result<(), Err> {
        walk(v, |(k, v)| {
            if inside(k) {
                out.push((k.to_vec(), v.to_vec()));
            }
        })
        .map(drop)
    };
    if let Some(f) = from {
        // The chunk that starts before `from` may hold rows after it.
        if let Some(row) = t
            .range::<&[u8]>(..f)
            .map_err(|e| e.to_string())?
            .next_back()
        {
            take(row.map_err(|e| e.to_string())?.1.value())?;
        }
    }
    let lo = from.map_or(Bound::Unbounded, Bound::Included);
    let hi = to.map_or(Bound::Unbounded, Bound::Excluded);
    for row in t.range::<&[u8]>((lo, hi)).map_err(|e| e.to_string())? {
        take(row.map_err(|e| e.to_string())?.1.value())?;
    }
    Ok(out)
}

/// How many rows packed table `t` holds.
pub fn count<T: ReadableTable<&'static [u8], &'static [u8]>>(t: &T) -> Result<u64, Err> {
    let mut n = 0u64;
    for row in t.iter().map_err(|e| e.to_string())? {
        let (_, v) = row.map_err(|e| e.to_string())?;
        let b = v.value();
        let c = b
            .get(..4)
            .and_then(|h| h.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| "a packed row too short to read".to_string())?;
        n += u64::from(c);
    }
    Ok(n)
}
