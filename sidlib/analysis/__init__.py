"""The claim-checking tools: each module turns a proposition or theorem of the papers into
computations a notebook can assert on.

theory          ideal SID cascades, numerical minimisation (SID Lemma 1, Proposition 1)
descent         descent bounds and their terms, trained-cascade statistics (SID Propositions 2, 4)
profiling       per-stage step costs and the projected speed-up over P devices (SID Proposition 3)
staleness       gradient error from stale teachers (SID Proposition 5)
depth           each module's gradient by depth, with and without the softmax between modules (SID Figure 4)
similarity      linear CKA of beliefs, true-class belief trajectories along depth (SID Figures 5, 8)
features        the extractor's feature space: t-SNE and how separable its classes are (SID Figure 7)
gaussian_chain  exact ELBOs of linear-Gaussian chains (SLL Theorem 1)
projections     random projections, distortion and Gaussian mutual information (SLL Theorem 2)
"""
