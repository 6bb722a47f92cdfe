"""Stage 3: follower-normalized like-rank labels, author-disjoint splits, Caffe LMDBs and the mean."""
