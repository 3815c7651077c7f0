"""The printable consultation report as a PDF, with a CJK font from the system.

The PDF holds what the report page holds: both stations, the people, the
times, the case summary, the signed opinion and its signature data. The
opinion's Markdown is printed as the text that was signed, not rendered, so
the page matches the SHA-256 beside it. Building it is CPU work: callers run
`render_report` in a worker thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, cast

from fpdf import FPDF
from fpdf.fonts import FontFace

from commons.errors import HuiyunError
from consult.fields import SHANGHAI

logger = logging.getLogger(__name__)

# Debian's fonts-wqy-zenhei first (the test bootstrap installs it), then the
# other common CJK packages of Debian and Fedora
FONT_CANDIDATES = (
    Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"),
    Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"),
    Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"),
    Path("/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc"),
    Path("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf"),
)
FAMILY = "cjk"
LABEL_WIDTH_MM = 45
LINE_MM = 6
Translate = Callable[[str], str]


def N_(message: str) -> str:
    """Mark a label for the catalog; it is translated later, by value."""
    return message


class FontMissing(HuiyunError):
    """No font with Chinese glyphs is installed, so no PDF can be made."""

    status = 503
    code = "font_missing"


class _BitmapTableNoise(logging.Filter):
    # WenQuanYi carries bitmap strikes that fontTools drops when subsetting
    # and says so on every PDF; the outlines we use are unaffected
    def filter(self, record: logging.LogRecord) -> bool:
        return "NOT subset" not in record.getMessage()


logging.getLogger("fontTools.subset").addFilter(_BitmapTableNoise())


def find_cjk_font(candidates: Sequence[Path] | None = None) -> Path:
    """The first installed CJK font file; FontMissing says how to install one."""
    candidates = FONT_CANDIDATES if candidates is None else candidates
    for path in candidates:
        if path.is_file():
            return path
    raise FontMissing(
        "the PDF report needs a font with Chinese characters and none is "
        f"installed (looked for {', '.join(p.name for p in candidates)}); "
        "install the Debian package fonts-wqy-zenhei or fonts-noto-cjk"
    )


class ReportLabels(Protocol):
    """English labels of stored values, translated by value."""

    @property
    def state(self) -> Mapping[str, str]: ...
    @property
    def sex(self) -> Mapping[str, str]: ...
    @property
    def method(self) -> Mapping[str, str]: ...
    @property
    def consenter(self) -> Mapping[str, str]: ...
    @property
    def title(self) -> Mapping[str, str]: ...


@dataclass(frozen=True, kw_only=True)
class ReportInput:
    doc: Mapping[str, Any]
    opinions: Sequence[Mapping[str, Any]]  # signed versions, first to latest
    verified: Sequence[bool]  # one per version: content matches its SHA-256
    names: Mapping[str, str]  # station code -> name
    labels: ReportLabels
    generated_at: datetime


def render_report(report: ReportInput, translate: Translate, *, font: Path) -> bytes:
    """The report as PDF bytes, its labels in the reader's language."""
    pdf = _ReportPdf(translate, report.generated_at)
    pdf.add_font(FAMILY, "", str(font))
    pdf.set_font(FAMILY, size=10)
    pdf.add_page()
    writer = _Writer(pdf, translate, report)
    writer.title()
    writer.parties()
    writer.times()
    writer.case()
    writer.opinion()
    pdf.ln(4)
    pdf.set_font(size=8)
    note = translate(
        "The inviting clinician remains responsible for the patient's care."
    )
    _paragraph(pdf, 5, note)
    return bytes(pdf.output())


class _ReportPdf(FPDF):
    def __init__(self, translate: Translate, generated_at: datetime) -> None:
        super().__init__(format="A4")
        generated, page = translate("Generated at"), translate("Page")
        self._footer_text = f"{generated} {_when(generated_at)} · {page} "
        self.set_margins(15, 15, 15)
        self.set_auto_page_break(auto=True, margin=15)
        self.set_creator("huiyun")

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font(FAMILY, size=8)
        self.cell(0, 5, f"{self._footer_text}{self.page_no()}/{{nb}}", align="C")


class _Writer:
    """Writes the report's sections in order; one method per section."""

    def __init__(self, pdf: FPDF, translate: Translate, report: ReportInput) -> None:
        self.pdf = pdf
        self.translate = translate
        self.report = report
        self.doc = report.doc

    def title(self) -> None:
        doc, labels = self.doc, self.report.labels
        self.pdf.set_font(size=16)
        _paragraph(self.pdf, 9, self.translate("Remote consultation report"))
        self.pdf.set_font(size=9)
        state = self.translate(labels.state.get(doc["state"], doc["state"]))
        consultation = self.translate("Consultation")
        _paragraph(self.pdf, 5, f"{consultation} {doc['_id']} · {state}")

    def parties(self) -> None:
        doc, labels, names = self.doc, self.report.labels, self.report.names
        rows = [
            (N_("Inviting station"), _station(doc["station_code"], names)),
            (N_("Requesting clinician"), doc.get("requested_by_name")),
            (N_("Invited station"), _station(doc["target_station_code"], names)),
            (N_("Expert"), doc.get("expert_name")),
        ]
        if doc.get("expert_title"):
            title = labels.title.get(doc["expert_title"], doc["expert_title"])
            rows.append((N_("Professional title"), self.translate(title)))
        if doc.get("expert_registration_number"):
            rows.append((N_("Registration number"), doc["expert_registration_number"]))
        self._section(self.translate("Parties"), rows)

    def times(self) -> None:
        doc = self.doc
        rows = [
            (N_("Requested at"), _when(doc.get("requested_at"))),
            (N_("Accepted at"), _when(doc.get("accepted_at"))),
        ]
        if doc.get("slot"):
            slot = doc["slot"]
            session = f"{_when(slot['start'])} – {_when(slot['end'])}"
            rows.append((N_("Scheduled session"), session))
        acknowledged = _when(doc.get("acknowledged_at"))
        if doc.get("acknowledged_by_name"):
            acknowledged += f" · {doc['acknowledged_by_name']}"
        rows += [
            (N_("Session started"), _when(doc.get("started_at"))),
            (N_("Session ended"), _when(doc.get("ended_at"))),
            (N_("Opinion signed"), _when(doc.get("opinion_signed_at"))),
            (N_("Acknowledged at"), acknowledged),
        ]
        self._section(self.translate("Times"), rows)

    def case(self) -> None:
        doc, labels = self.doc, self.report.labels
        patient, case = doc["patient"], doc["case"]
        born = patient.get("birth_date") or patient.get("age_years") or ""
        sex = self.translate(labels.sex.get(patient.get("sex", ""), ""))
        rows = [(N_("Patient"), f"{patient.get('name', '')} · {sex} · {born}")]
        pregnancy = doc.get("pregnancy") or {}
        if pregnancy.get("gestational_weeks") is not None:
            weeks = pregnancy["gestational_weeks"]
            days = pregnancy.get("gestational_days") or 0
            unit = self.translate("weeks")
            rows.append((N_("Gestational age"), f"{weeks}+{days} {unit}"))
        rows.append((N_("Chief complaint"), case.get("complaint")))
        if case.get("examinations"):
            rows.append((N_("Examinations and results"), case["examinations"]))
        rows.append((N_("Question for the expert"), case.get("question")))
        rows.append((N_("Informed consent"), self._consent()))
        self._section(self.translate("Case summary"), rows)

    def _consent(self) -> str:
        consent, labels = self.doc.get("consent"), self.report.labels
        if not consent:
            return "—"
        consenter = self.translate(labels.consenter.get(consent["consenter"], ""))
        method = self.translate(labels.method.get(consent["method"], ""))
        return f"{consenter} · {method} · {_when(consent.get('obtained_at'))}"

    def opinion(self) -> None:
        opinions = self.report.opinions
        if not opinions:
            self._heading(self.translate("Opinion"))
            _paragraph(self.pdf, LINE_MM, self.translate("No signed opinion yet."))
            return
        content = opinions[-1]["content"]
        referral = (
            self.translate("yes")
            if content.get("referral_advised")
            else self.translate("no")
        )
        rows = [
            (N_("Assessment"), content.get("assessment")),
            (N_("Recommendations"), content.get("recommendations")),
            (N_("Referral advised"), referral),
            (N_("Follow-up date"), content.get("follow_up_date") or "—"),
        ]
        if content.get("body_markdown"):
            rows.append((N_("Opinion text (Markdown)"), content["body_markdown"]))
        self._section(self.translate("Opinion"), rows)
        self._signatures()

    def _signatures(self) -> None:
        self._heading(self.translate("Signature"))
        self.pdf.set_font(size=8)
        headings = (
            N_("Version"),
            N_("Signed by"),
            N_("Signed at"),
            "SHA-256",
            N_("Check"),
        )
        with self.pdf.table(
            col_widths=(14, 34, 30, 72, 30),
            line_height=5,
            headings_style=FontFace(emphasis="", fill_color=(235, 235, 235)),
        ) as table:
            header = table.row()
            for heading in headings:
                header.cell(
                    self.translate(heading) if heading != "SHA-256" else heading
                )
            for record, verified in zip(
                self.report.opinions, self.report.verified, strict=True
            ):
                row = table.row()
                row.cell(str(record["version"]))
                row.cell(_text(record.get("signed_by_name")))
                row.cell(_when(record.get("signed_at")))
                row.cell(record["sha256"])
                check = N_("verified") if verified else N_("does not match its content")
                row.cell(self.translate(check))
        self.pdf.set_font(size=10)

    def _heading(self, text: str) -> None:
        # a heading stays with the first lines below it
        if self.pdf.will_page_break(3 + 8 + 3 * LINE_MM):
            self.pdf.add_page()
        self.pdf.ln(3)
        self.pdf.set_font(size=12)
        _paragraph(self.pdf, 8, text)
        self.pdf.set_font(size=10)

    def _section(self, heading: str, rows: Sequence[tuple[str, Any]]) -> None:
        # rows, not an fpdf table: a table row cannot run over a page break,
        # and an assessment or the opinion text may be longer than a page
        self._heading(heading)
        for label, value in rows:
            self._row(self.translate(label), _text(value))

    def _row(self, label: str, value: str) -> None:
        pdf = self.pdf
        # with output="HEIGHT" a dry run answers the height alone
        label_mm = cast(
            float,
            pdf.multi_cell(
                LABEL_WIDTH_MM, LINE_MM, label, dry_run=True, output="HEIGHT"
            ),
        )
        if pdf.will_page_break(max(label_mm, LINE_MM)):
            pdf.add_page()
        top, page = pdf.get_y(), pdf.page
        pdf.set_text_color(90, 90, 90)
        pdf.multi_cell(LABEL_WIDTH_MM, LINE_MM, label, new_x="RIGHT", new_y="TOP")
        pdf.set_text_color(0, 0, 0)
        pdf.multi_cell(0, LINE_MM, value, new_x="LMARGIN", new_y="NEXT")
        if pdf.page == page:
            pdf.set_y(max(pdf.get_y(), top + label_mm))
        pdf.set_draw_color(220, 220, 220)
        pdf.line(pdf.l_margin, pdf.get_y(), pdf.w - pdf.r_margin, pdf.get_y())


def _paragraph(pdf: FPDF, line_mm: float, text: str) -> None:
    pdf.multi_cell(0, line_mm, text, new_x="LMARGIN", new_y="NEXT")


def _station(code: str, names: Mapping[str, str]) -> str:
    return f"{names.get(code, code)} ({code})"


def _when(value: Any) -> str:
    if not isinstance(value, datetime):
        return "—"
    return value.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M")


def _text(value: Any) -> str:
    """Free text as plain characters: control codes out, lines kept."""
    if value is None or value == "":
        return "—"
    text = str(value).replace("\r\n", "\n")
    return "".join(c for c in text if c == "\n" or c.isprintable())
