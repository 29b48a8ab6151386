//! Gathering the facts for the audit: the history read from a point in
//! time to its end (events and the relays' notes), and the local spool.

use std::collections::BTreeMap;
use std::path::Path;

use super::notes::Note;
use super::reckoning::Facts;
use crate::history::{Ends, Filter, Reader, Start};
use crate::spool::listing;
use crate::wire::envelope::Stamp;
use crate::wire::headers::REPLAYED_FROM;

/// Every relay's facts, by relay id, from the history stream `stream`
/// read from `start` to its end; only `relay`'s when given.
pub async fn history(
    connection: &lapin::Connection,
    stream: &str,
    start: Start,
    relay: Option<&str>,
) -> anyhow::Result<BTreeMap<String, Facts>> {
    let filter = Filter {
        notes: true,
        ..Filter::default()
    };
    let mut reader = Reader::open(connection, stream, start, Ends::AtTheEnd, filter).await?;
    let mut relays: BTreeMap<String, Facts> = BTreeMap::new();
    let wanted = |id: &str| relay.is_none_or(|relay| relay == id);
    while let Some(event) = reader.next().await? {
        if let Some(note) = Note::of(&event.properties, &event.body) {
            if wanted(note.relay_id()) {
                relays
                    .entry(note.relay_id().to_owned())
                    .or_default()
                    .note(note);
            }
            continue;
        }
        let headers = event.properties.headers().as_ref();
        // A replay's copy (from the history, the quarantine) keeps its stamp:
        // the original is what the relay stored.
        if headers.is_some_and(|h| h.inner().contains_key(REPLAYED_FROM)) {
            continue;
        }
        // Account changes and events an older relay stored carry no stamp.
        let Some(stamp) = Stamp::of(headers) else {
            continue;
        };
        if wanted(&stamp.relay) {
            let received = event.received_at();
            let facts = relays.entry(stamp.relay.to_string()).or_default();
            // The first of a relay's numbers the read meets is where its
            // reckoning starts: what came before is outside the read (the
            // stream's retention, --since), and an older number that
            // arrives later (a spool drained, a parked webhook retried) is
            // seen, not a reason to reckon back to where the stream begins.
            facts.floor.get_or_insert(stamp.seq);
            facts.seen.insert(stamp.seq, received);
        }
    }
    reader.close().await;
    Ok(relays)
}

/// What the spool file at `path` holds, by relay: read *before* the
/// history, so that a webhook drained in between is found in the history
/// rather than in neither.
pub fn spool(path: &Path, relay: Option<&str>) -> anyhow::Result<BTreeMap<String, Vec<u64>>> {
    let mut spooled: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for listed in listing::list(path)? {
        let (Some(id), Some(seq)) = (listed.relay_id, listed.relay_seq) else {
            continue;
        };
        if relay.is_none_or(|relay| relay == id) {
            spooled.entry(id).or_default().push(seq);
        }
    }
    Ok(spooled)
}
