"""Output names and the format options: PREFIX from --out, and the file kind and joint order that --format and
--joint-order ask for."""
from pathlib import Path

from core import locations
from core.common import UserError, check_writable
from data.joints import ORDERS
from uploads.kinds import FORMATS, KINDS


def output_prefix(out, default_name):
    """PREFIX from --out (a known suffix such as .zip is dropped), else the submissions root / default_name."""
    prefix = Path(out) if out else locations.root("submissions") / default_name
    for kind in KINDS.values():
        if prefix.name.endswith(kind.suffix):
            prefix = prefix.with_name(prefix.name[:-len(kind.suffix)])
    check_writable(prefix.parent, "the folder of --out")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    return prefix


def check_order_name(joint_order):
    if joint_order is not None and joint_order not in ORDERS:
        raise UserError(f"--joint-order {joint_order!r}: choose one of {', '.join(ORDERS)}")


def resolve_format(fmt, joint_order, layout):
    """(format, joint order) from the options and the layout: freihand files are always in FreiHAND order."""
    fmt = fmt or ("mp21" if layout == "mp21" else "freihand")
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    check_order_name(joint_order)
    kind = KINDS[fmt]
    if not kind.any_order and joint_order not in (None, kind.default_order):
        raise UserError(f"--joint-order {joint_order}: the {fmt} format is always in FreiHAND order; "
                        f"leave out --joint-order or use --format mp21")
    return fmt, joint_order or kind.default_order


def expected_order(kind, joint_order, path):
    """The joint order a file of ``kind`` must hold: --joint-order where the kind may hold any order (an mp21 upload,
    default ait), else FreiHAND."""
    check_order_name(joint_order)
    if not kind.any_order and joint_order not in (None, kind.default_order):
        raise UserError(f"--joint-order {joint_order}: {path} is a {kind.name} file, always in FreiHAND order; leave "
                        f"out --joint-order")
    return joint_order or kind.default_order
