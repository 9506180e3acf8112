#!/usr/bin/env python3
"""Writes sample Waze partner-feed snapshots: one JSON document per file, one minute apart, named
`waze-feed-2019-03-22T21-38-00Z.json`, ... so the names sort in time order. Deterministic: the same
seed gives the same bytes on every run.

Each snapshot has `alerts`, `jams` and `irregularities` like the real feed: about half of one
snapshot's items come back in the next (same uuid/id, some fields updated: alerts' nThumbsUp and
reliability, jams' delay and speed, irregularities' update time and counts), the rest disappear and
new ones appear. Optional fields (street, city, reportDescription, endNode, nested irregularity
alerts) are absent on some items, `subtype` is sometimes "", numbers are both integers and floats.
With 3 snapshots: the first has `"alerts": []` and the last has no `irregularities` key at all;
irregularities overlap between the first two, alerts between the last two, jams everywhere.

    python3 scripts/gen-waze-feed.py                      # 3 small snapshots -> pipelines/samples/waze-feed
    python3 scripts/gen-waze-feed.py /tmp/feed --snapshots 10 --alerts 1000 --jams 2000 --irregularities 50
    python3 scripts/gen-waze-feed.py --expect             # only count what an existing folder holds

Existing `waze-feed-*.json` files in the output folder are replaced. Prints the distinct counts
over all snapshots written (alerts by uuid, jams by uuid, irregularities by id) as one JSON object,
e.g. {"alerts": 59, "jams": 123, "irregularities": 9} for the defaults.
"""
import argparse
import json
import random
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

START = datetime(2019, 3, 22, 21, 38, tzinfo=timezone.utc)
PLACES = [("Staten Island, NY", -74.15, 40.58, ["Hylan Blvd", "Richmond Ave", "Victory Blvd", "I-278 E"]),
          ("Brooklyn, NY", -73.95, 40.65, ["Atlantic Ave", "Flatbush Ave", "Ocean Pkwy", "BQE W"]),
          ("Jersey City, NJ", -74.07, 40.72, ["Kennedy Blvd", "Montgomery St", "Rt-440 N"]),
          ("Newark, NJ", -74.17, 40.73, ["Broad St", "McCarter Hwy", "I-78 W"])]
ALERT_TYPES = {"WEATHERHAZARD": ["HAZARD_ON_ROAD_POT_HOLE", "HAZARD_ON_SHOULDER_CAR_STOPPED", "HAZARD_ON_ROAD_OBJECT", ""],
               "JAM": ["JAM_HEAVY_TRAFFIC", "JAM_STAND_STILL_TRAFFIC", ""],
               "ACCIDENT": ["ACCIDENT_MINOR", ""], "ROAD_CLOSED": ["ROAD_CLOSED_CONSTRUCTION", ""]}
DESCRIPTIONS = ["Pothole", "car on shoulder", "Heavy traffic", "debris in right lane", "Closed for work"]


def millis(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def feed_time(t: datetime) -> str:  # "2019-03-22 21:38:00:000"
    return t.strftime("%Y-%m-%d %H:%M:%S:") + f"{t.microsecond // 1000:03d}"


def place(rng, item):
    """Sets city/street (each absent now and then) and returns the place's centre."""
    city, x, y, streets = rng.choice(PLACES)
    if rng.random() > 0.1:
        item["city"] = city
    if rng.random() > 0.15:
        item["street"] = rng.choice(streets)
    item["country"] = "US"
    return x + rng.uniform(-0.05, 0.05), y + rng.uniform(-0.05, 0.05)


def line(rng, x, y, points):
    return [{"x": round(x + i * rng.uniform(-0.003, 0.003), 6), "y": round(y + i * rng.uniform(-0.003, 0.003), 6)}
            for i in range(points)]


def new_alert(rng, now):
    kind = rng.choice(list(ALERT_TYPES))
    a = {"uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)), "type": kind,
         "subtype": rng.choice(ALERT_TYPES[kind]), "reliability": rng.randint(5, 8), "confidence": rng.randint(0, 2),
         "reportRating": rng.randint(0, 5), "roadType": rng.choice([1, 2, 3, 6, 17]), "magvar": rng.randint(0, 359)}
    x, y = place(rng, a)
    a["location"] = {"x": round(x, 6), "y": round(y, 6)}
    a["pubMillis"] = millis(now) - rng.randint(0, 3_600_000)
    a["nThumbsUp"] = 0
    if rng.random() < 0.3:
        a["reportDescription"] = rng.choice(DESCRIPTIONS)
    return a


def update_alert(rng, a, now):
    a["nThumbsUp"] += rng.randint(0, 2)
    a["reliability"] = min(10, a["reliability"] + rng.randint(0, 1))


def new_jam(rng, now):
    jid = rng.randint(400_000_000, 499_999_999)
    j = {"uuid": jid, "id": jid, "level": 0, "speedKMH": 0.0, "speed": 0.0, "length": rng.randint(80, 3000),
         "delay": 0, "roadType": rng.choice([1, 2, 3, 6]), "type": "NONE", "turnType": "NONE"}
    x, y = place(rng, j)
    if rng.random() > 0.3:
        j["endNode"] = rng.choice(PLACES)[3][0]
    points = rng.randint(2, 4)
    j["line"] = line(rng, x, y, points)
    j["segments"] = [{"fromNode": rng.randint(1, 10**8), "ID": rng.randint(1, 10**9), "toNode": rng.randint(1, 10**8),
                      "isForward": rng.random() < 0.7} for _ in range(points - 1)]
    j["pubMillis"] = millis(now) - rng.randint(0, 600_000)
    update_jam(rng, j, now)
    return j


def update_jam(rng, j, now):
    j["level"] = rng.randint(1, 5)
    j["speedKMH"] = round(rng.uniform(0, 40), 2) if j["level"] < 5 else 0  # integer 0 when standing still
    j["speed"] = round(j["speedKMH"] / 3.6, 2) if j["level"] < 5 else 0
    j["delay"] = rng.randint(10, 600) if j["level"] < 5 else -1


def new_irregularity(rng, now):
    detected = now - timedelta(minutes=rng.randint(5, 120), seconds=rng.randint(0, 59))
    i = {"id": rng.randint(10_000_000, 99_999_999), "detectionDate": detected.strftime("%a %b %d %H:%M:%S +0000 %Y"),
         "detectionDateMillis": millis(detected), "type": rng.choice(["Small", "Medium", "Large"]),
         "startNode": rng.choice(PLACES)[3][0], "endNode": rng.choice(PLACES)[3][-1], "length": rng.randint(300, 8000)}
    x, y = place(rng, i)
    i.update({"severity": 0, "jamLevel": 0, "driversCount": 0, "alertsCount": 0, "nThumbsUp": 0, "nComments": 0,
              "nImages": 0, "highway": rng.random() < 0.4, "causeType": rng.choice(["ACCIDENT", "HAZARD", "NONE"]),
              "line": line(rng, x, y, rng.randint(3, 5))})
    update_irregularity(rng, i, now)
    return i


def update_irregularity(rng, i, now):
    updated = now - timedelta(seconds=rng.randint(0, 59))
    i["updateDate"], i["updateDateMillis"] = updated.strftime("%a %b %d %H:%M:%S +0000 %Y"), millis(updated)
    i["regularSpeed"] = round(rng.uniform(25, 90), 1)
    i["speed"] = round(i["regularSpeed"] * rng.uniform(0.1, 0.5), 1)
    i["delaySeconds"], i["seconds"] = rng.randint(60, 900), rng.randint(120, 1800)
    i["trend"], i["severity"], i["jamLevel"] = rng.choice([-1, 0, 1]), rng.randint(1, 5), rng.randint(3, 5)
    i["driversCount"] += rng.randint(1, 6)
    i["nThumbsUp"] += rng.randint(0, 1)


def evolve(rng, previous, target, make, update, now):
    """Half of `previous` survives (updated in place), topped up with new items to ~target."""
    survivors = set(rng.sample(range(len(previous)), len(previous) // 2))
    kept = [item for n, item in enumerate(previous) if n in survivors]
    for item in kept:
        update(rng, item, now)
    size = max(0, round(target * rng.uniform(0.9, 1.1)))
    return kept + [make(rng, now) for _ in range(max(0, size - len(kept)))]


def generate(out: Path, snapshots: int, sizes: dict, seed: int) -> None:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("waze-feed-*.json"):
        old.unlink()
    alerts, jams, irregs = [], [], []
    for n in range(snapshots):
        now = START + timedelta(minutes=n)
        alerts = evolve(rng, alerts, sizes["alerts"], new_alert, update_alert, now)
        jams = evolve(rng, jams, sizes["jams"], new_jam, update_jam, now)
        irregs = evolve(rng, irregs, sizes["irregularities"], new_irregularity, update_irregularity, now)
        if snapshots >= 2 and n == 0:
            alerts = []  # the first snapshot's alerts array is empty
        for i in irregs:  # nested alerts: copies of current alerts near the irregularity, sometimes absent
            if alerts and rng.random() < 0.5:
                i["alerts"] = [dict(a) for a in rng.sample(alerts, min(len(alerts), rng.randint(1, 2)))]
            else:
                i.pop("alerts", None)
            i["alertsCount"] = len(i.get("alerts", []))
        doc = {"startTimeMillis": millis(now), "endTimeMillis": millis(now + timedelta(minutes=1)),
               "startTime": feed_time(now), "endTime": feed_time(now + timedelta(minutes=1)),
               "alerts": alerts, "jams": jams, "irregularities": irregs}
        if snapshots >= 2 and n == snapshots - 1:
            del doc["irregularities"]  # the last snapshot has no irregularities key at all
        name = out / f"waze-feed-{now:%Y-%m-%dT%H-%M-%SZ}.json"
        name.write_text(json.dumps(doc, separators=(",", ":")) + "\n")


def count(out: Path) -> dict:
    seen = {"alerts": set(), "jams": set(), "irregularities": set()}
    for path in sorted(out.glob("waze-feed-*.json")):
        doc = json.loads(path.read_text())
        seen["alerts"].update(a["uuid"] for a in doc.get("alerts", []))
        seen["jams"].update(j["uuid"] for j in doc.get("jams", []))
        seen["irregularities"].update(i["id"] for i in doc.get("irregularities", []))
    return {kind: len(ids) for kind, ids in seen.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", default="pipelines/samples/waze-feed", type=Path)
    p.add_argument("--snapshots", type=int, default=3)
    p.add_argument("--alerts", type=int, default=40)
    p.add_argument("--jams", type=int, default=60)
    p.add_argument("--irregularities", type=int, default=6)
    p.add_argument("--seed", type=int, default=20190322)
    p.add_argument("--expect", action="store_true", help="only print the counts for the files already in OUT")
    args = p.parse_args()
    if not args.expect:
        generate(args.out, args.snapshots, {"alerts": args.alerts, "jams": args.jams,
                                            "irregularities": args.irregularities}, args.seed)
    print(json.dumps(count(args.out)))


if __name__ == "__main__":
    main()
