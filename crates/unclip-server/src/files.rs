//! Images answered with `response_format: "url"`: kept in memory under an unguessable id and
//! served at `/v1/files/{id}.png` until they expire (`url_ttl`, one hour by default, as
//! OpenAI's URLs do) or until the store's byte budget pushes the oldest out.

use axum::body::Bytes;
use rand::Rng;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct ImageStore {
    ttl: Duration,
    max_bytes: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    images: HashMap<String, (Instant, Bytes)>,
    order: VecDeque<String>,
    bytes: usize,
}

impl Inner {
    fn evict_front(&mut self) {
        if let Some(id) = self.order.pop_front() {
            if let Some((_, png)) = self.images.remove(&id) {
                self.bytes -= png.len();
            }
        }
    }
}

impl ImageStore {
    pub fn new(ttl: Duration, max_bytes: usize) -> Self {
        Self {
            ttl,
            max_bytes,
            inner: Mutex::default(),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Keeps `png` and returns its id (128 random bits, hex).
    pub fn insert(&self, png: Bytes) -> String {
        let id = format!("{:032x}", rand::rng().random::<u128>());
        let now = Instant::now();
        let Ok(mut inner) = self.inner.lock() else {
            return id;
        };
        // Insertion order is expiry order, so expired images are at the front.
        while let Some(front) = inner.order.front() {
            let expired = inner
                .images
                .get(front)
                .is_none_or(|(expires, _)| *expires <= now);
            if !expired && inner.bytes + png.len() <= self.max_bytes {
                break;
            }
            inner.evict_front();
        }
        inner.bytes += png.len();
        inner.order.push_back(id.clone());
        inner.images.insert(id.clone(), (now + self.ttl, png));
        id
    }

    pub fn get(&self, id: &str) -> Option<Bytes> {
        let inner = self.inner.lock().ok()?;
        let (expires, png) = inner.images.get(id)?;
        (*expires > Instant::now()).then(|| png.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_expire() {
        let store = ImageStore::new(Duration::from_millis(30), 1 << 20);
        let id = store.insert(Bytes::from_static(b"png"));
        assert_eq!(store.get(&id).as_deref(), Some(&b"png"[..]));
        std::thread::sleep(Duration::from_millis(40));
        assert!(store.get(&id).is_none());
    }

    #[test]
    fn the_byte_budget_evicts_the_oldest() {
        let store = ImageStore::new(Duration::from_secs(60), 10);
        let a = store.insert(Bytes::from(vec![0u8; 6]));
        let b = store.insert(Bytes::from(vec![1u8; 6]));
        assert!(store.get(&a).is_none());
        assert!(store.get(&b).is_some());
        assert_ne!(a, b);
    }
}
