"""The durable spool: deliveries pushd answered "retrying" live here until final.

At-least-once: a delivery answered ``retrying`` (or the protocol's equivalent) is in
the store before the answer leaves, sealed (:mod:`.seal`); it ends delivered, removed,
failed or expired, whatever crashes in between.  An attempt in flight when a process
dies may be sent twice; nothing acknowledged is lost.  Retries drain at the pace each
app's circuit allows (:mod:`.circuit`), claimed by lease (:mod:`.worker`), and their
outcomes are written in batches (:mod:`.ledger`).
"""
