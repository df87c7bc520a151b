"""The state and checkpoint component of a stateful service (one shared way).

A service folds its batches into a key-value state and declares its effects; this
package keeps that state durable and restartable, so no service writes its own commit
order. :mod:`.store`: the ports (:class:`~.store.KeyValue`, :class:`~.store.StateStore`),
the in-memory store and the per-batch :class:`~.store.Overlay`; :mod:`.rocks`: the local
RocksDB; :mod:`.changelog`: the compacted changelog topic, produce and restore;
:mod:`.checkpoint`: the :class:`~.checkpoint.Checkpoint` that owns the durability order
(effects -> changelog entries -> state + source offsets in one write), resume offsets,
and the design for several workers; :mod:`.shards`: one checkpoint per shard of a route
topic, opened and closed with the consumer's assignment (issue 16).
"""
