"""The scrape stage's counters, by the names its summary (and the catalog's runs table) uses.

Everything that counts (the stage, the downloader, the folder import) and everything that reads a
count (the summary line, the demo) uses these constants, so a misspelt name fails at import time
instead of silently counting (or reading) nothing.
"""
PAGES = "pages"                                   # timeline pages read
POSTS_NEW = "posts_new"                           # posts the catalog did not have
POSTS_SEEN_AGAIN = "posts_seen_again"             # posts it had (their counts refreshed)
POSTS_SKIPPED = "posts_skipped"                   # statuses left out, by reason
AUTHORS_FLAGGED_OPTED_OUT = "authors_flagged_opted_out"
HOME_REFRESHED = "home_refreshed"                 # posts re-read from their home server
HOME_REFRESH_FAILED = "home_refresh_failed"
TAG_ERRORS = "tag_errors"                         # tags left early this run, by reason
PAGING_STOPPED = "paging_stopped"                 # paging ended early (a cycle, nothing new)
TAGS_PAUSED = "tags_paused"                       # tags stopped at scrape.max_pages
IMAGES_KEPT = "images_kept"                       # downloaded (or imported) and stored
IMAGES_REUSED = "images_reused"                   # an image already kept from the same url
IMAGES_SKIPPED = "images_skipped"                 # permanent: not an image, too big, gone...
IMAGES_FAILED = "images_failed"                   # transient: retried next run
