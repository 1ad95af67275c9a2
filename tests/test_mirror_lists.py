"""The mirror list file: its keys, its tag and platform filters, and its refusals."""

from __future__ import annotations

import pytest
import yaml

from proxy.mirror.lists import DEFAULT_CONFIG_EXAMPLE, MirrorListError, load_list

TAGS = ["v1.0.0", "v1.2.0", "1.3.1", "v1.10.0", "v2.0.0", "2.1.0-rc.1", "latest", "main", "v1.2.0-alpine"]


def _entry(tmp_path, **image):
    path = tmp_path / "list.yaml"
    path.write_text(yaml.safe_dump({"images": [{"name": "registry.test/bars/img", **image}]}))
    return load_list(path).images[0]


def test_the_example_list_loads_with_the_keys_scripts_rely_on():
    listing = load_list(DEFAULT_CONFIG_EXAMPLE)
    assert listing.name == "edge-site"
    first, multi = listing.images[0], listing.images[1]
    assert (first.name, first.tags) == ("registry.test/bars/img", ("v1",))
    assert [str(p) for p in multi.platforms] == ["linux/amd64"]


def test_the_name_defaults_to_the_file_stem(tmp_path):
    path = tmp_path / "night shift.yaml"
    path.write_text(yaml.safe_dump({"images": [{"name": "registry.test/a/b", "tags": "v1"}]}))
    listing = load_list(path)
    assert listing.name == "night-shift" and listing.images[0].tags == ("v1",)


@pytest.mark.parametrize("filters, expected", [
    ({"tags": ["latest"]}, ["latest"]),
    ({"tag_regex": r"^v1\."}, ["v1.0.0", "v1.10.0", "v1.2.0", "v1.2.0-alpine"]),
    ({"semver": ">=1.2.0 <2"}, ["1.3.1", "v1.10.0", "v1.2.0"]),
    ({"semver": "^1.2"}, ["1.3.1", "v1.10.0", "v1.2.0"]),
    ({"semver": "~1.2"}, ["v1.2.0"]),
    ({"semver": "2.x"}, ["v2.0.0"]),  # a prerelease is outside a plain range
    ({"newest": 2}, ["v1.10.0", "v2.0.0"]),  # the prerelease 2.1.0-rc.1 does not count
    ({"semver": "1.x", "newest": 1}, ["v1.10.0"]),  # numeric order, not string order
    ({"tag_regex": "alpine$", "tags": ["main"]}, ["main", "v1.2.0-alpine"]),
])
def test_tag_filters(tmp_path, filters, expected):
    assert _entry(tmp_path, **filters).select_tags(TAGS) == expected


def test_newest_counts_semver_order_not_string_order(tmp_path):
    assert _entry(tmp_path, newest=3).select_tags(["v1.9.0", "v1.10.0", "v1.2.0", "latest"]) == \
        ["v1.10.0", "v1.2.0", "v1.9.0"]


def test_platforms(tmp_path):
    entry = _entry(tmp_path, tags=["v1"], platforms=["linux/amd64", "linux/arm64/v8"])
    assert entry.wants_platform({"os": "linux", "architecture": "amd64"})
    assert entry.wants_platform({"os": "linux", "architecture": "arm64"})  # arm64 means v8
    assert entry.wants_platform({"os": "linux", "architecture": "arm64", "variant": "v8"})
    assert not entry.wants_platform({"os": "linux", "architecture": "arm", "variant": "v7"})
    assert not entry.wants_platform({"os": "windows", "architecture": "amd64"})
    assert not entry.wants_platform(None)
    every = _entry(tmp_path, tags=["v1"])
    assert every.platforms == "all" and every.wants_platform(None)
    loose = _entry(tmp_path, tags=["v1"], platforms=["linux/arm64"])
    assert loose.wants_platform({"os": "linux", "architecture": "arm64", "variant": "v8"})


@pytest.mark.parametrize("doc, words", [
    ({"images": []}, "images"),
    ({"images": [{"name": "registry.test/a"}]}, "name the tags"),
    ({"images": [{"name": "registry.test/a", "tags": ["v1"], "platforms": ["amd64"]}]}, "no platform"),
    ({"images": [{"name": "registry.test/a", "semver": "~~~"}]}, "not a semver range"),
    ({"images": [{"name": "registry.test/a", "tag_regex": "("}]}, "not a regular expression"),
    ({"images": [{"name": "registry.test/a", "newest": 0}]}, "newest"),
    ({"images": [{"name": "registry.test/a", "tags": ["v1"], "into": "disk"}]}, "into"),
    ({"images": [{"name": "registry.test/a", "tags": ["v1"]}, {"name": "registry.test/a", "tags": ["v2"]}]},
     "named twice"),
    ({"name": "bad name!", "images": [{"name": "registry.test/a", "tags": ["v1"]}]}, "name"),
    (["not", "a", "mapping"], "mapping"),
])
def test_refusals_name_the_file_and_the_key(tmp_path, doc, words):
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(MirrorListError) as caught:
        load_list(path)
    assert "broken.yaml" in str(caught.value) and words in str(caught.value)


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(MirrorListError, match="cannot read"):
        load_list(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("images: [unclosed")
    with pytest.raises(MirrorListError, match="not valid YAML"):
        load_list(tmp_path / "bad.yaml")


@pytest.mark.parametrize("schedule, words", [
    ("bogus words", "neither a duration"),
    ("0 0 31 2 *", "never comes"),   # the 31st of February
    ("-5m", "neither a duration"),
])
def test_bad_schedules_are_refused_at_load(schedule, words):
    from proxy.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match=words):
        config_from_dict({"mirror": {"schedule": schedule}})


@pytest.mark.parametrize("schedule", ["6h", "30m", 3600, "0 3 * * *", "*/15 * * * *"])
def test_good_schedules_load(schedule):
    from proxy.config import config_from_dict

    assert config_from_dict({"mirror": {"schedule": schedule}}).mirror.schedule == str(schedule)
