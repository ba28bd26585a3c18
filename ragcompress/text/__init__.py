"""Text compressors: passages in, shorter passages out (same ids, scores and metadata).

One method per module, each registered by name (build with ``ragcompress.build({"name": ...})``):

==================  ============================  ===========  =====================================
name                class                         query-aware  method
==================  ============================  ===========  =====================================
``sentences``       sentences.SentenceSelector    yes          sentences closest to the query
``tokens``          tokens.TokenPruner            no           highest-surprisal tokens (LLMLingua)
``tokens-query``    tokens.QueryTokenPruner       yes          same, question prepended
``summary``         summarize.Summarizer          yes          query-focused LM summary (RECOMP)
``redundancy``      redundancy.RedundancyFilter   no           drop near-duplicate sentences
``dedup-passages``  redundancy.PassageDeduplicator no          drop near-duplicate passages
``chain``           chain.Chain                   if a step is steps in sequence, final budget on total
``random``          random_drop.RandomDrop        no           random sentences (the baseline)
==================  ============================  ===========  =====================================

Modules are imported by the registry on first use, not here, so ``import ragcompress`` stays light.
"""
