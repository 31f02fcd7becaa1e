"""The README's XEP table and doap.xml are what the modules declare (regenerate with
``python -m cluster_node.modules.catalog``)."""

import xml.etree.ElementTree as ET

from cluster_node.core.hooks import Hook
from cluster_node.modules import BUILTIN
from cluster_node.modules.catalog import ROOT, doap, hooks_reference, settings_reference, with_table, xep_table


def test_readme_table_is_current():
    readme = (ROOT / "README.md").read_text()
    assert with_table(readme, xep_table()) == readme, "run: python -m cluster_node.modules.catalog"


def test_doap_is_current_and_lists_every_xep():
    text = (ROOT / "doap.xml").read_text()
    assert text == doap(), "run: python -m cluster_node.modules.catalog"
    root = ET.fromstring(text)
    listed = {el.get("{http://www.w3.org/1999/02/22-rdf-syntax-ns#}resource")
              for el in root.iter("{https://linkmauve.fr/ns/xmpp-doap#}xep")}
    declared = {f"https://xmpp.org/extensions/xep-{x.number:04d}.html" for m in BUILTIN.values() for x in m.xeps}
    assert listed == declared
    assert "https://xmpp.org/extensions/xep-0198.html" in listed


def test_table_names_the_module_of_each_xep():
    table = xep_table()
    assert "| XEP-0198 | 1.6.1 | complete | module `stream_management` |" in table
    assert "| XEP-0199 | 2.0.1 | complete | module `ping` |" in table


def test_settings_reference_is_current_and_documents_every_key():
    text = (ROOT / "docs" / "module-settings.md").read_text()
    assert text == settings_reference(), "run: python -m cluster_node.modules.catalog"
    for name, cls in BUILTIN.items():
        assert f"## `[modules.{name}]`" in text
        for key in cls.Settings.model_fields:
            assert f"| `{key}` |" in text
    assert "| `resume_timeout` | `300` |" in text


def test_hooks_reference_is_current_and_lists_every_hook():
    text = (ROOT / "docs" / "hooks.md").read_text()
    assert text == hooks_reference(), "run: python -m cluster_node.modules.catalog"
    names = [v for k, v in vars(Hook).items() if k.isupper() and isinstance(v, str)]
    assert names and all(f"| `{name}` |" in text for name in names)
