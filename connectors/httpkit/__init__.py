"""The HTTP connector toolkit: components a REST stream is composed from (STYLE 2).

    components.py  spec models (paginators, error rules, retry, rate limit, partitioners, cursor)
    egress.py      where requests may go (https only; no private, link-local or metadata addresses)
    auth.py        static credentials and token exchanges (OAuth 2.0 refresh, Google service account)
    credential.py  one Ray actor per credential: shared budget, single-flight token refresh
    budget.py      the token bucket and the API's own quota signals
    requester.py   one request: budget, auth, redirects, error table, retries (tenacity)
    paginate.py    next-page logic and page counts
    records.py     JSON records to Arrow
    gather.py      a partition's records: record rules, keyset de-duplication, ties across pages
    cursor.py      cursor bounds, lookback and date windows
    stream.py      HttpStream: plan partitions, read pages in parallel
"""
