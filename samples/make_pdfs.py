"""Build the PDF documents of the Acme knowledge base from the text held here.

    python samples/make_pdfs.py [--out samples/acme]

One page per section (a heading and its paragraphs), so the PDF loader's one-section-per-page
gives focused chunks. Core fonts only (Helvetica), so every text here must be latin-1. The
creation date is fixed: running the script again writes byte-identical files. Needs fpdf2 (a dev
dependency).
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXED_DATE = datetime(2024, 6, 1, tzinfo=UTC)

# path (relative to samples/acme) -> (document title, [(page heading, [paragraphs])])
PDFS: dict[str, tuple[str, list[tuple[str, list[str]]]]] = {
    "policies/warranty.pdf": ("Acme warranty", [
        ("Acme warranty", [
            "Every Acme widget carries a two-year warranty against manufacturing defects. Keep "
            "your invoice: it is your proof of purchase.",
            "Kitchen and garden gadgets carry a one-year warranty. Batteries are consumables and "
            "are not covered. The warranty applies in addition to your statutory rights as a "
            "consumer, never instead of them.",
        ]),
        ("Claims", [
            "To claim the warranty, open a ticket with the serial number engraved under the "
            "widget. A replacement ships within three business days.",
            "For widgets you keep the faulty part until the replacement arrives; you do not need "
            "to send anything back first. For gadgets we email you a prepaid label and ship the "
            "replacement once the faulty gadget has been checked in at our workshop.",
        ]),
        ("Exclusions", [
            "The warranty does not cover damage from misuse, water in indoor models, or "
            "engraving done by third parties.",
            "Normal wear, such as a patina on brass or a worn grip ring, is not a defect. Damage "
            "from frost to a garden gadget left outdoors in winter is not covered either.",
        ]),
        ("Acme CarePlus", [
            "Acme CarePlus extends the warranty of a widget to four years in total. It costs "
            "9.50 EUR per item and can be added in your account within six weeks of delivery.",
            "CarePlus also covers accidental damage once during its term, for example a widget "
            "bent in a fall, and includes free return shipping for every claim.",
        ]),
    ]),
    "guides/steel-widget-installation.pdf": ("Installing the steel widget", [
        ("Installing the steel widget: before you start", [
            "This guide shows how to mount the steel widget (W-100) on a brick or concrete wall. "
            "The first widget takes about half an hour; the next ones go much faster.",
            "You need: a hammer drill with an 8 mm masonry drill bit, a spirit level, a pencil, "
            "a 5 mm hex key and the drilling template from the box.",
            "Before drilling, check the wall with a detector for hidden cables and water pipes. "
            "Never drill directly above or below a light switch or a socket.",
        ]),
        ("Mounting step by step", [
            "1. Hold the template against the wall, check it with the spirit level and mark the "
            "two holes. They are 72 mm apart.",
            "2. Drill both holes 55 mm deep and blow out the dust.",
            "3. Push in the wall plugs until they sit flush with the wall.",
            "4. Hold the widget in place, drain slot facing down, and turn in the two M6 screws "
            "with the hex key. Tighten them to 6 Nm: firmly, but stop as soon as the widget sits "
            "tight, or the plugs may spin.",
        ]),
        ("After mounting", [
            "Hang only half of the planned load for the first day, while the plugs settle.",
            "Check the screws again after the first week and tighten them if needed. Outdoors, "
            "make sure the drain slot points down, so rainwater runs off.",
            "If the widget moves, the wall is probably hollow: see the troubleshooting guide.",
        ]),
    ]),
    "guides/garden-gadget-manual.pdf": ("Garden gadget manual", [
        ("Garden gadget manual: setting up", [
            "Open the battery bay on the back with a coin. Insert two AA alkaline batteries, "
            "plus side up as shown in the bay. Do not use rechargeable batteries: their voltage "
            "is too low and the valve may not close fully.",
            "Screw the gadget onto the tap by hand. No tools are needed, and a wrench can crack "
            "the thread. Open the tap fully: the gadget controls the flow.",
        ]),
        ("Programming the timer", [
            "Press PROG to enter programming mode. First set the current time with the arrow "
            "buttons and confirm with OK.",
            "Then choose a slot, P1 to P4. For each slot set the start time, the watering "
            "duration and the days, and confirm each value with OK. A slot without a duration "
            "stays switched off.",
            "Press the water drop button to water straight away, outside the programme; press it "
            "again to stop.",
        ]),
        ("Error codes on the garden gadget display", [
            "E1: the batteries are low. Replace both batteries within a few days.",
            "E2: no water is flowing. Check that the tap is fully open and the hose is not kinked.",
            "E3: the inlet filter is blocked. Unscrew the gadget and rinse the filter.",
            "E4: valve fault. Hold the RESET button for 10 seconds until the display flashes. If "
            "E4 comes back, contact Acme support with the serial number on the battery bay lid.",
        ]),
    ]),
    "inventory/service-level-agreement.pdf": ("Acme Stockroom service level agreement", [
        ("Acme Stockroom service level agreement: availability", [
            "Acme guarantees the following monthly availability of the Stockroom web app, mobile "
            "API and REST API:",
            "Basic plan: 99.5%. Pro plan: 99.9%. Enterprise plan: 99.95%.",
            "Availability is measured by an external monitoring service that checks the app "
            "every minute. Planned maintenance does not count as downtime.",
        ]),
        ("Service credits", [
            "If the availability of a month falls below the target of your plan, you receive a "
            "credit of 10% of that month's fee. If it falls below 99.0%, the credit is 25% of the "
            "month's fee.",
            "Ask for the credit through support by the end of the following month. Credits are "
            "set off against your next invoice and are not paid out in cash.",
        ]),
        ("Support response times", [
            "Priority 1 (the app is down or data is missing): Enterprise within 1 hour, around "
            "the clock; Pro within 4 hours during support hours.",
            "Priority 2 (a feature does not work): Enterprise within 8 hours, Pro by the next "
            "working day.",
            "Basic plan customers are answered by email during support hours.",
        ]),
        ("Planned maintenance", [
            "Planned maintenance takes place on Sundays between 02:00 and 04:00 Berlin time. We "
            "announce it by email and on status.acme.example at least one week ahead.",
            "Emergency security updates may be installed at any time; we keep them as short as "
            "possible and report them on the status page.",
        ]),
    ]),
    "company/sustainability-report.pdf": ("Acme sustainability report 2023", [
        ("Sustainability report 2023: materials", [
            "Our steel widgets are made from 70% recycled steel, bought from a mill in Saxony. "
            "Our brass widgets contain 60% recycled brass from offcuts and returned widgets.",
            "All widgets are designed to be taken apart and recycled: no glued parts and no "
            "mixed materials.",
        ]),
        ("Energy", [
            "The roof of our Chemnitz factory carries a solar plant with a peak output of "
            "380 kWp, which covers about a third of the factory's electricity. The rest of the "
            "power for all our sites is certified green electricity.",
        ]),
        ("Packaging and shipping", [
            "Since 2023 all our packaging has been plastic-free: boxes are made of recycled "
            "cardboard and parcels are sealed with paper tape.",
            "Parcels inside Germany are shipped climate-neutral with DHL GoGreen.",
        ]),
        ("Take-back programme", [
            "Send back any old Acme widget, whatever its age or condition, with a free return "
            "label from your account. We recycle the metal in Chemnitz, and you get a 5 EUR "
            "voucher for your next order for every parcel of old widgets.",
        ]),
        ("Our targets", [
            "We aim for net zero emissions in our own operations by 2030 and want to halve the "
            "emissions per parcel shipped by 2028, compared with 2021.",
        ]),
    ]),
}


def build(title: str, pages: list[tuple[str, list[str]]]) -> bytes:
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_creation_date(FIXED_DATE)
    pdf.set_title(title)
    pdf.set_author("Acme Widgets GmbH")
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.set_margins(11, 15, 11)
    for heading, paragraphs in pages:
        pdf.add_page()
        pdf.set_font("Helvetica", "B", 16)
        pdf.multi_cell(0, 9, heading, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(2)
        pdf.set_font("Helvetica", "", 12)
        for para in paragraphs:
            pdf.multi_cell(0, 7, para, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(3)
    return bytes(pdf.output())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "acme", help="the knowledge base folder")
    args = ap.parse_args()
    for rel, (title, pages) in PDFS.items():
        path = args.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(build(title, pages))
        print(f"wrote {path} ({len(pages)} pages)")


if __name__ == "__main__":
    main()
