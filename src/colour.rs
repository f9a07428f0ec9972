//! Cursor colours: which colour each browser gets in one room.
//!
//! The product promise is that two people present at once never share a colour while the
//! palette lasts, and that a person who comes back gets their colour again. The browser id
//! behind it comes from an unauthenticated request, so the book must also stay cheap and
//! small whatever a client sends: each call costs O(palette) plus amortised O(1), and the
//! book holds at most `MAX_BROWSERS` browsers (the oldest absent ones are forgotten first).

use std::collections::{HashMap, VecDeque};

use tokio::time::{Duration, Instant};

use crate::id::BrowserId;

/// 14 hues far apart on the wheel and in lightness, each dark enough to read as a caret on
/// white and to carry a white name label.
pub const PALETTE: [&str; 14] = [
    "#d7263d", // crimson
    "#f46036", // orange
    "#b8860b", // goldenrod
    "#7f8c00", // olive
    "#2a9d3f", // green
    "#1b998b", // teal
    "#00a0b0", // cyan
    "#2e86de", // blue
    "#0b3d91", // navy
    "#5f27cd", // indigo
    "#8e44ad", // purple
    "#e84393", // pink
    "#8d6e63", // brown
    "#34495e", // slate
];

/// How long a colour handed out over HTTP stays reserved for a browser that has not
/// connected yet (it normally connects within a second).
const RESERVATION: Duration = Duration::from_secs(60);

/// Browsers remembered per room. Past this, the absent browser whose reservation is oldest
/// is forgotten (it may get another colour when it comes back).
const MAX_BROWSERS: usize = 4096;

#[derive(Default)]
pub(crate) struct ColourBook {
    browsers: HashMap<BrowserId, Holder>,
    /// How many present browsers (connected or reserved) hold each colour.
    in_use: [u32; PALETTE.len()],
    /// Reservations in the order they were made, which is also the order they expire
    /// (every reservation lasts `RESERVATION`). Entries superseded by a later reservation of
    /// the same browser are skipped when they come up.
    expiries: VecDeque<(Instant, BrowserId)>,
}

struct Holder {
    colour: usize,
    connections: usize,
    reserved_until: Instant,
    /// Whether this holder is counted in `in_use`.
    counted: bool,
}

impl Holder {
    fn present(&self, now: Instant) -> bool {
        self.connections > 0 || self.reserved_until > now
    }
}

impl ColourBook {
    /// The colour index for `browser`, reserving it for `RESERVATION`.
    pub(crate) fn assign(&mut self, browser: &BrowserId) -> usize {
        let now = Instant::now();
        self.expire(now);
        if !self.browsers.contains_key(browser) {
            self.make_room();
        }
        let mut used = self.in_use;
        let current = self.browsers.get(browser);
        if let Some(holder) = current
            && holder.counted
        {
            used[holder.colour] -= 1; // our own hold does not count against us
        }
        let colour = match current {
            // A browser keeps the colour it holds; one coming back gets it again if free.
            Some(holder) if holder.counted || used[holder.colour] == 0 => holder.colour,
            _ => {
                // Start from a per-browser spot so that, after a restart, a browser is likely
                // to get its old colour back; then take the first free (or least used) one.
                let start = stable_hash(browser.as_str()) % PALETTE.len();
                (0..PALETTE.len())
                    .map(|i| (start + i) % PALETTE.len())
                    .min_by_key(|&c| used[c])
                    .unwrap_or(start)
            }
        };
        let holder = self.browsers.entry(browser.clone()).or_insert(Holder {
            colour,
            connections: 0,
            reserved_until: now,
            counted: false,
        });
        if holder.counted {
            self.in_use[holder.colour] -= 1;
        }
        holder.colour = colour;
        holder.counted = true;
        holder.reserved_until = now + RESERVATION;
        self.in_use[colour] += 1;
        self.expiries.push_back((holder.reserved_until, browser.clone()));
        if self.expiries.len() > 2 * MAX_BROWSERS {
            // Only superseded entries can be dropped here; the live ones number at most
            // MAX_BROWSERS, so this runs rarely (amortised O(1) per call).
            let browsers = &self.browsers;
            self.expiries
                .retain(|(until, b)| browsers.get(b).is_some_and(|h| h.reserved_until == *until));
        }
        colour
    }

    /// A connection of `browser` joined (only our editor and token holders name one; stock
    /// clients choose their own colour and are not tracked).
    pub(crate) fn connected(&mut self, browser: &BrowserId) {
        if !self.browsers.contains_key(browser) {
            // It asked while the room was not loaded (see `Rooms::colour`): it was told
            // the colour `assign` gives in an empty room, and gets it here if still free.
            self.assign(browser);
        }
        if let Some(holder) = self.browsers.get_mut(browser) {
            holder.connections += 1;
            if !holder.counted {
                holder.counted = true;
                self.in_use[holder.colour] += 1;
            }
        }
    }

    pub(crate) fn disconnected(&mut self, browser: &BrowserId) {
        let now = Instant::now();
        if let Some(holder) = self.browsers.get_mut(browser) {
            holder.connections = holder.connections.saturating_sub(1);
            if holder.counted && !holder.present(now) {
                holder.counted = false;
                self.in_use[holder.colour] -= 1;
            }
        }
    }

    /// Releases reservations that ran out.
    fn expire(&mut self, now: Instant) {
        while let Some((until, _)) = self.expiries.front()
            && *until <= now
        {
            let Some((until, browser)) = self.expiries.pop_front() else { break };
            if let Some(holder) = self.browsers.get_mut(&browser)
                && holder.reserved_until == until
                && holder.counted
                && !holder.present(now)
            {
                holder.counted = false;
                self.in_use[holder.colour] -= 1;
            }
        }
    }

    /// Keeps the book at `MAX_BROWSERS`: forgets absent browsers, oldest reservation first,
    /// and if every browser is present, releases the oldest reservation early.
    fn make_room(&mut self) {
        while self.browsers.len() >= MAX_BROWSERS {
            let Some((until, browser)) = self.expiries.pop_front() else { break };
            let Some(holder) = self.browsers.get(&browser) else { continue };
            if holder.reserved_until != until || holder.connections > 0 {
                continue;
            }
            if holder.counted {
                self.in_use[holder.colour] -= 1;
            }
            self.browsers.remove(&browser);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.browsers.len()
    }
}

/// FNV-1a: stable across runs and platforms (std's hasher is randomly seeded).
fn stable_hash(s: &str) -> usize {
    let mut hash: u64 = 0xcbf29ce484222325;
    for byte in s.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    hash as usize
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn browser(s: &str) -> BrowserId {
        BrowserId::parse(s).expect("valid")
    }

    #[tokio::test]
    async fn colours_are_distinct_while_the_palette_lasts() {
        let mut book = ColourBook::default();
        let mut seen = HashSet::new();
        for i in 0..PALETTE.len() {
            let b = browser(&format!("b{i}"));
            let colour = book.assign(&b);
            book.connected(&b);
            assert!(seen.insert(colour), "colour {colour} handed out twice");
        }
        // Past the palette, colours repeat but stay evenly spread.
        let extra = book.assign(&browser("extra"));
        let again = book.assign(&browser("extra2"));
        assert_ne!(extra, again, "the least used colour is picked");
    }

    #[tokio::test]
    async fn a_returning_browser_gets_its_colour_back() {
        let mut book = ColourBook::default();
        let (a, b) = (browser("alice"), browser("bob"));
        let colour_a = book.assign(&a);
        book.connected(&a);
        let colour_b = book.assign(&b);
        book.connected(&b);
        assert_ne!(colour_a, colour_b);
        book.disconnected(&a);
        assert_eq!(book.assign(&a), colour_a);
        assert_eq!(book.assign(&a), colour_a, "asking twice keeps it");
    }

    #[tokio::test(start_paused = true)]
    async fn reservations_expire_and_free_their_colour() {
        let mut book = ColourBook::default();
        let holders: Vec<BrowserId> =
            (0..PALETTE.len()).map(|i| browser(&format!("h{i}"))).collect();
        for b in &holders {
            book.assign(b);
        }
        assert!(book.in_use.iter().all(|&n| n == 1), "all 14 reserved");
        tokio::time::advance(RESERVATION + Duration::from_secs(1)).await;
        let newcomer = book.assign(&browser("new"));
        assert_eq!(book.in_use.iter().sum::<u32>(), 1, "expired reservations released");
        assert!(newcomer < PALETTE.len());
    }

    #[tokio::test]
    async fn the_book_stays_bounded_under_a_flood_of_ids() {
        let mut book = ColourBook::default();
        let keeper = browser("keeper");
        let colour = book.assign(&keeper);
        book.connected(&keeper);
        for i in 0..(3 * MAX_BROWSERS) {
            book.assign(&browser(&format!("flood{i}")));
        }
        assert!(book.len() <= MAX_BROWSERS, "{}", book.len());
        assert!(book.expiries.len() <= 2 * MAX_BROWSERS + 1);
        // The connected browser was never forgotten and keeps its colour.
        assert_eq!(book.assign(&keeper), colour);
        let counted: u32 = book.browsers.values().filter(|h| h.counted).count() as u32;
        assert_eq!(book.in_use.iter().sum::<u32>(), counted, "counts stay exact");
    }
}
