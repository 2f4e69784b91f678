"""The GA4 dimensions and metrics the emulator serves: names, wire types and the value lists behind them.

Categorical values are listed in popularity order (the first is drawn most often). Hierarchies are kept as
tuples so that reports agree with each other: a city always lies in one country, a session source always
has one medium and one default channel group. Some values are non-ASCII or need JSON escaping on purpose.
Metric formulas read the additive fact columns of `ga4_data` (sums over a report row) and return one value
per row; ratios are computed from sums, never averaged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

COUNTRIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("United States", ("New York", "Los Angeles", "Chicago", "San Francisco", "Seattle", "Austin", "Boston")),
    ("India", ("Mumbai", "Bengaluru", "Delhi", "Hyderabad", "Pune")),
    ("United Kingdom", ("London", "Manchester", "Edinburgh", "Bristol")),
    ("Germany", ("Berlin", "Munich", "Hamburg", "Düsseldorf", "Frankfurt")),
    ("Canada", ("Toronto", "Vancouver", "Montreal")),
    ("Brazil", ("São Paulo", "Rio de Janeiro", "Belo Horizonte")),
    ("France", ("Paris", "Lyon", "Marseille")),
    ("Japan", ("Tokyo", "Osaka", "Yokohama")),
    ("Australia", ("Sydney", "Melbourne", "Brisbane")),
    ("Spain", ("Madrid", "Barcelona", "Valencia")),
    ("Netherlands", ("Amsterdam", "Rotterdam", "Utrecht")),
    ("Poland", ("Warsaw", "Kraków", "Wrocław")),
    ("Mexico", ("Mexico City", "Guadalajara", "Monterrey")),
    ("Sweden", ("Stockholm", "Malmö")),
    ("Switzerland", ("Zurich", "Geneva")),
    ("Italy", ("Milan", "Rome")),
    ("South Korea", ("Seoul", "Busan")),
    ("Türkiye", ("Istanbul", "Ankara")),
    ("Nigeria", ("Lagos",)),
    ("Côte d’Ivoire", ("Abidjan",)),
)

TRAFFIC: tuple[tuple[str, str, str], ...] = (  # (sessionSource, sessionMedium, sessionDefaultChannelGroup)
    ("google", "organic", "Organic Search"),
    ("(direct)", "(none)", "Direct"),
    ("google", "cpc", "Paid Search"),
    ("bing", "organic", "Organic Search"),
    ("newsletter", "email", "Email"),
    ("linkedin.com", "referral", "Organic Social"),
    ("facebook.com", "referral", "Organic Social"),
    ("news.ycombinator.com", "referral", "Referral"),
    ("github.com", "referral", "Referral"),
    ("t.co", "referral", "Organic Social"),
    ("duckduckgo", "organic", "Organic Search"),
    ("chatgpt.com", "referral", "Referral"),
    ("yahoo", "organic", "Organic Search"),
    ("baidu", "organic", "Organic Search"),
    ("(not set)", "(not set)", "Unassigned"),
)

DEVICES = ("desktop", "mobile", "tablet")
DEVICE_WEIGHTS = (0.55, 0.40, 0.05)
HOSTS = ("www.example.com", "shop.example.com", "docs.example.com")
BROWSERS = ("Chrome", "Safari", "Edge", "Firefox", "Samsung Internet", "Opera", "Android Webview")
OPERATING_SYSTEMS = ("Windows", "iOS", "Android", "Macintosh", "Linux", "Chrome OS")
LANGUAGES = ("English", "German", "Spanish", "French", "Japanese", "Portuguese", "Hindi", "Polish", "Korean",
             "Italian")
EVENTS = ("page_view", "user_engagement", "session_start", "scroll", "first_visit", "click", "view_item",
          "form_start", "add_to_cart", "purchase")
NEW_VS_RETURNING = ("returning", "new", "(not set)")
AGE_BRACKETS = ("unknown", "25-34", "35-44", "18-24", "45-54", "55-64", "65+")
GENDERS = ("unknown", "male", "female")

_SPECIAL_PAGES = (  # (pagePath, pageTitle): the most visited pages, some with characters that need escaping
    ("/", "Example - Home"), ("/pricing", "Pricing"), ("/blog", "Blog"), ("/docs", "Documentation"),
    ("/search?q=delta+lake&lang=en", "Search results"), ("/about", "About us"), ("/contact", "Contact"),
    ("/blog/naïve-bayes-explained", "Naïve Bayes, explained"), ('/legacy/"quoted"\\path', 'Legacy "quoted" page'),
    ("/ja/はじめに", "はじめに"),
)
_SECTIONS = ("blog", "docs", "products", "help")
_WORDS = ("delta", "lakehouse", "streaming", "pipelines", "connectors", "schemas", "quotas", "paging",
          "retries", "backfill", "lookback", "partitions", "cursors", "tokens", "arrow", "parquet")


def page(rank: int) -> tuple[str, str]:
    """The (pagePath, pageTitle) of the page of popularity `rank`; distinct ranks give distinct pages."""
    if rank < len(_SPECIAL_PAGES):
        return _SPECIAL_PAGES[rank]
    j = rank - len(_SPECIAL_PAGES)
    section, word, n = _SECTIONS[j % 4], _WORDS[(j // 4) % len(_WORDS)], j // (4 * len(_WORDS))
    return f"/{section}/{word}-{n}", f"{word.capitalize()} {n} | {section.capitalize()}"


@dataclass(frozen=True)
class DimensionInfo:
    """A dimension: the fact column it reads and whether requesting it makes a report thresholded."""

    name: str
    ui_name: str
    category: str
    column: str  # "day" for the date dimensions
    thresholded: bool = False


DATE_DIMENSIONS = frozenset({"date", "year", "yearMonth", "month", "dayOfWeek"})

DIMENSIONS: Mapping[str, DimensionInfo] = MappingProxyType({d.name: d for d in (
    DimensionInfo("date", "Date", "Time", "day"),
    DimensionInfo("year", "Year", "Time", "day"),
    DimensionInfo("yearMonth", "Month", "Time", "day"),
    DimensionInfo("month", "Month", "Time", "day"),
    DimensionInfo("dayOfWeek", "Day of week", "Time", "day"),
    DimensionInfo("country", "Country", "Geography", "place"),
    DimensionInfo("city", "City", "Geography", "place"),
    DimensionInfo("deviceCategory", "Device category", "Platform / device", "device"),
    DimensionInfo("browser", "Browser", "Platform / device", "browser"),
    DimensionInfo("operatingSystem", "Operating system", "Platform / device", "os"),
    DimensionInfo("language", "Language", "User", "language"),
    DimensionInfo("newVsReturning", "New / returning", "User", "newret"),
    DimensionInfo("userAgeBracket", "Age", "Demographics", "age", thresholded=True),
    DimensionInfo("userGender", "Gender", "Demographics", "gender", thresholded=True),
    DimensionInfo("sessionSource", "Session source", "Traffic source", "traffic"),
    DimensionInfo("sessionMedium", "Session medium", "Traffic source", "traffic"),
    DimensionInfo("sessionDefaultChannelGroup", "Session default channel group", "Traffic source", "traffic"),
    DimensionInfo("hostName", "Hostname", "Page / screen", "host"),
    DimensionInfo("pagePath", "Page path", "Page / screen", "page"),
    DimensionInfo("pageTitle", "Page title", "Page / screen", "page"),
    DimensionInfo("eventName", "Event name", "Event", "event"),
)})

MEASURES = ("sessions", "engaged", "users", "new_users", "total_users", "views", "events", "key_events",
            "transactions", "duration_ms", "engagement_s", "revenue_cents")

Sums = Mapping[str, np.ndarray]


def _ratio(numerator: np.ndarray, denominator: np.ndarray, scale: float = 1.0) -> np.ndarray:
    out = np.zeros(len(numerator), dtype=np.float64)
    np.divide(numerator * (1.0 / scale), denominator, out=out, where=denominator != 0)
    return out


@dataclass(frozen=True)
class MetricInfo:
    """A metric: its wire type (`metricHeaders[].type`) and its value per report row from the summed facts."""

    name: str
    ui_name: str
    category: str
    type: str
    formula: Callable[[Sums], np.ndarray]  # int64 values render as integers, float64 as decimals


def _sum(column: str) -> Callable[[Sums], np.ndarray]:
    return lambda s: s[column]


METRICS: Mapping[str, MetricInfo] = MappingProxyType({m.name: m for m in (
    MetricInfo("activeUsers", "Active users", "User", "TYPE_INTEGER", _sum("users")),
    MetricInfo("newUsers", "New users", "User", "TYPE_INTEGER", _sum("new_users")),
    MetricInfo("totalUsers", "Total users", "User", "TYPE_INTEGER", _sum("total_users")),
    MetricInfo("sessions", "Sessions", "Session", "TYPE_INTEGER", _sum("sessions")),
    MetricInfo("engagedSessions", "Engaged sessions", "Session", "TYPE_INTEGER", _sum("engaged")),
    MetricInfo("bounceRate", "Bounce rate", "Session", "TYPE_FLOAT",
               lambda s: _ratio(s["sessions"] - s["engaged"], s["sessions"])),
    MetricInfo("engagementRate", "Engagement rate", "Session", "TYPE_FLOAT",
               lambda s: _ratio(s["engaged"], s["sessions"])),
    MetricInfo("averageSessionDuration", "Average session duration", "Session", "TYPE_SECONDS",
               lambda s: _ratio(s["duration_ms"], s["sessions"], 1000.0)),
    MetricInfo("sessionsPerUser", "Sessions per user", "Session", "TYPE_FLOAT",
               lambda s: _ratio(s["sessions"], s["users"])),
    MetricInfo("userEngagementDuration", "User engagement", "User", "TYPE_SECONDS", _sum("engagement_s")),
    MetricInfo("screenPageViews", "Views", "Page / screen", "TYPE_INTEGER", _sum("views")),
    MetricInfo("screenPageViewsPerSession", "Views per session", "Page / screen", "TYPE_FLOAT",
               lambda s: _ratio(s["views"], s["sessions"])),
    MetricInfo("eventCount", "Event count", "Event", "TYPE_INTEGER", _sum("events")),
    MetricInfo("keyEvents", "Key events", "Event", "TYPE_INTEGER", _sum("key_events")),
    MetricInfo("transactions", "Transactions", "Ecommerce", "TYPE_INTEGER", _sum("transactions")),
    MetricInfo("totalRevenue", "Total revenue", "Revenue", "TYPE_CURRENCY",
               lambda s: s["revenue_cents"] / 100.0),
)})


def metadata(property_id: str) -> dict[str, object]:
    """The body of `GET /v1beta/properties/{id}/metadata` (contract section 1)."""
    return {
        "name": f"properties/{property_id}/metadata",
        "dimensions": [{"apiName": d.name, "uiName": d.ui_name, "description": f"{d.ui_name} ({d.category}).",
                        "category": d.category, "customDefinition": False} for d in DIMENSIONS.values()],
        "metrics": [{"apiName": m.name, "uiName": m.ui_name, "description": f"{m.ui_name} ({m.category}).",
                     "type": m.type, "category": m.category, "customDefinition": False}
                    for m in METRICS.values()],
    }
