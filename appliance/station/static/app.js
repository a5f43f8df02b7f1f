// The reference kiosk screen: plain JS, no build step. State comes from the daemon's SSE stream
// (/v1/events); every tap is one POST /v1/<action> (docs/local-api.md). The screen token travels
// in the HttpOnly cookie set when the page was opened as /?token=...
"use strict";

const T = {
  vi: {
    title: "Đăng ký căn cước công dân", cancel: "Hủy", begin: "Bắt đầu", place: "Đặt",
    welcome_lead: "Xin chào! Máy này giúp bạn đăng ký thẻ căn cước: ảnh chân dung và vân tay.",
    officer_title: "Cán bộ đăng nhập", officer_id: "Mã cán bộ", pin: "Mật khẩu / mã PIN",
    sign_in: "Đăng nhập", identify_title: "Nhập số căn cước (12 số) hoặc CMND (9 số)",
    lookup: "Tra cứu", confirm_title: "Kiểm tra thông tin của bạn",
    confirm_help: "Nếu thông tin nào chưa đúng, bấm \"Yêu cầu sửa\" và ghi giá trị đúng.",
    back: "Quay lại", confirm: "Thông tin đúng, tiếp tục", consent_title: "Đồng ý thu nhận",
    consent_text: "Tôi đồng ý để máy chụp ảnh chân dung và lấy vân tay mười ngón của tôi để cấp thẻ căn cước. Dữ liệu được mã hóa ngay khi thu nhận và chỉ gửi đến cơ quan cấp thẻ.",
    decline: "Không đồng ý", accept: "Tôi đồng ý", portrait_title: "Chụp ảnh chân dung",
    portrait_start: "Bắt đầu chụp", fingers_title: "Lấy vân tay",
    on_sensor: "lên máy quét", cannot: "Ngón này không lấy được", scan: "Bắt đầu quét",
    skip_title: "Ngoại lệ — cần cán bộ giám sát xác nhận", bandaged: "Đang băng bó",
    missing: "Không có ngón", unreadable: "Không đọc được", supervisor_id: "Mã cán bộ giám sát",
    approve: "Xác nhận ngoại lệ", review_title: "Kiểm tra lần cuối", submit: "Gửi hồ sơ",
    receipt_title: "Đã gửi hồ sơ", receipt_help: "Giữ mã hồ sơ này để tra cứu:", done: "Hoàn tất",
    correct: "Yêu cầu sửa", portrait: "Ảnh chân dung", quality: "chất lượng",
    captured: "đã lấy", skipped: "bỏ qua", exception: "ngoại lệ", todo: "chưa lấy",
    busy_lookup: "Đang tra cứu…", busy_portrait: "Đang chụp ảnh…", busy_finger: "Đang quét vân tay…",
    busy_submit: "Đang niêm phong và gửi hồ sơ…",
    look_at_camera: "Nhìn thẳng vào máy ảnh", hold: "Giữ yên, đang chụp…",
    waiting_for_finger: "Đặt ngón tay lên máy quét", lift: "Nhấc ngón tay lên",
    retry: "Chưa rõ, đặt lại ngón tay", attempt: "lần",
    notice_idle_timeout: "Phiên đã hủy vì không có thao tác. Dữ liệu đã được xóa.",
    notice_cancelled: "Đã hủy. Dữ liệu đã được xóa.",
    notice_cancelled_remote: "Phiên đã bị hủy từ trung tâm. Dữ liệu đã được xóa.",
    notice_consent_declined: "Bạn không đồng ý: không thu nhận dữ liệu nào.",
    notice_interrupted: "Máy vừa khởi động lại: vui lòng làm lại bước này.",
    notice_session_ended: "Phiên trước đã kết thúc.",
    issuance_choice: "Nhận thẻ ngay tại máy sau khi đăng ký",
    card_title: "Cấp thẻ căn cước", card_waiting_data: "Đang chờ dữ liệu thẻ từ trung tâm",
    card_insert_card: "Đưa thẻ trắng vào đầu đọc", card_writing: "Đang ghi thẻ",
    card_keep: "Không rút thẻ ra!", card_retry: "Thử lại với thẻ trắng khác", card_done: "Tiếp tục",
    card_skip: "Bỏ qua, nhận biên nhận", card_issued: "Đã ghi thẻ và kiểm tra lại thành công.",
    card_msg_waiting_data: "Trung tâm đang kiểm tra hồ sơ và chuẩn bị dữ liệu thẻ…",
    card_msg_insert_card: "Vui lòng đưa thẻ trắng vào đầu đọc.",
    card_msg_writing: "Đang ghi thẻ, vui lòng chờ.",
    card_document: "Số thẻ", receipt_card_issued: "Thẻ căn cước đã được cấp tại máy.",
    receipt_card_not_issued: "Thẻ chưa được cấp tại máy: thẻ sẽ được gửi đến sau.",
    fields: { full_name: "Họ và tên", date_of_birth: "Ngày sinh", sex: "Giới tính",
      nationality: "Quốc tịch", ethnicity: "Dân tộc", religion: "Tôn giáo",
      place_of_origin: "Quê quán", permanent_residence: "Nơi thường trú",
      identifying_marks: "Đặc điểm nhận dạng", father: "Cha", mother: "Mẹ", spouse: "Vợ/chồng",
      personal_id: "Số định danh", old_id_number: "Số CMND cũ", date_of_issue: "Ngày cấp",
      date_of_expiry: "Có giá trị đến" },
    hints: { come_closer: "Tiến lại gần", move_back: "Lùi ra xa một chút",
      face_camera: "Nhìn thẳng vào máy ảnh", straighten_head: "Giữ thẳng đầu",
      level_chin: "Giữ cằm ngang", move_left: "Dịch sang trái", move_right: "Dịch sang phải",
      move_up: "Nâng người lên một chút", move_down: "Hạ người xuống một chút",
      more_light: "Cần thêm ánh sáng", less_light: "Ánh sáng quá mạnh",
      even_light: "Ánh sáng chưa đều", sharp: "Giữ yên", hold_still: "Giữ yên",
      plain_background: "Đứng trước phông nền trơn", one_face: "Chỉ một người trước máy ảnh",
      no_face: "Nhìn thẳng vào máy ảnh" },
    fingers: ["", "ngón cái phải", "ngón trỏ phải", "ngón giữa phải", "ngón áp út phải",
      "ngón út phải", "ngón cái trái", "ngón trỏ trái", "ngón giữa trái", "ngón áp út trái",
      "ngón út trái"],
    errors: { officer_refused: "Mã cán bộ hoặc mật khẩu không đúng.",
      officer_expired: "Quyền của cán bộ đã hết hạn.",
      supervisor_required: "Cần cán bộ giám sát xác nhận ngoại lệ này.",
      citizen_not_found: "Không tìm thấy số này. Vui lòng kiểm tra lại.",
      directory_offline: "Không kết nối được trung tâm. Vui lòng thử lại.",
      directory_timeout: "Trung tâm chưa trả lời. Vui lòng thử lại.",
      device_timeout: "Không thấy ngón tay trên máy quét. Vui lòng thử lại.",
      invalid_args: "Thông tin chưa hợp lệ.", busy: "Máy đang bận, vui lòng chờ.",
      duplicate_finger: "Ngón này đã được lấy rồi. Vui lòng đặt đúng ngón được chỉ.",
      officer_finger: "Đây là vân tay của cán bộ. Vui lòng để công dân đặt ngón tay.",
      card_spoiled: "Ghi thẻ không thành công (thẻ bị rút ra hoặc bị lỗi). Thẻ này không dùng được.",
      card_not_blank: "Thẻ này không phải thẻ trắng. Vui lòng đưa thẻ trắng khác.",
      no_card: "Chưa thấy thẻ trong đầu đọc.",
      card_removed: "Thẻ bị rút ra trước khi ghi. Vui lòng đưa thẻ vào lại.",
      issuance_timeout: "Trung tâm chưa gửi dữ liệu thẻ. Hồ sơ đã được gửi; thẻ sẽ được cấp sau.",
      issuance_refused: "Trung tâm chưa cấp thẻ cho hồ sơ này. Hồ sơ đã được gửi.",
      issuance_mismatch: "Dữ liệu thẻ nhận được không khớp với hồ sơ này: máy không ghi thẻ.",
      issuance_disabled: "Máy này không cấp thẻ ngay.",
      interrupted: "Máy khởi động lại khi đang ghi thẻ: thẻ đó không dùng được." },
    left: "Tay trái", right: "Tay phải",
  },
  en: {
    title: "Citizen ID card enrollment", cancel: "Cancel", begin: "Start",
    welcome_lead: "Welcome! This kiosk enrolls you for your citizen ID card: a portrait and fingerprints.",
    officer_title: "Officer sign-in", officer_id: "Officer id", pin: "Password / PIN",
    sign_in: "Sign in", identify_title: "Enter your CCCD number (12 digits) or CMND (9 digits)",
    lookup: "Look up", confirm_title: "Check your details",
    confirm_help: "If something is wrong, tap \"Ask for a correction\" and write the right value.",
    back: "Back", confirm: "Details are right, continue", consent_title: "Consent",
    consent_text: "I agree that this kiosk takes my portrait and the fingerprints of my ten fingers for my ID card. The data is encrypted at capture and sent only to the issuing authority.",
    decline: "I do not agree", accept: "I agree", portrait_title: "Portrait",
    portrait_start: "Take the portrait", fingers_title: "Fingerprints", place: "Place your",
    on_sensor: "on the sensor", cannot: "This finger cannot be taken", scan: "Scan",
    skip_title: "Exception — a supervisor must confirm", bandaged: "Bandaged",
    missing: "Missing", unreadable: "Unreadable", supervisor_id: "Supervisor id",
    approve: "Confirm the exception", review_title: "Final check", submit: "Submit",
    receipt_title: "Enrollment submitted", receipt_help: "Keep this reference:", done: "Finish",
    correct: "Ask for a correction", portrait: "Portrait", quality: "quality",
    captured: "captured", skipped: "skipped", exception: "exception", todo: "to do",
    busy_lookup: "Looking up…", busy_portrait: "Taking the portrait…", busy_finger: "Scanning…",
    busy_submit: "Sealing and submitting…",
    look_at_camera: "Look straight at the camera", hold: "Hold still…",
    waiting_for_finger: "Place your finger on the sensor", lift: "Lift your finger",
    retry: "Not clear yet: place the finger again", attempt: "attempt",
    notice_idle_timeout: "Cancelled after no activity. The data was erased.",
    notice_cancelled: "Cancelled. The data was erased.",
    notice_cancelled_remote: "Cancelled by the centre. The data was erased.",
    notice_consent_declined: "You did not consent: nothing was captured.",
    notice_interrupted: "The kiosk restarted: please do this step again.",
    notice_session_ended: "The previous session has ended.",
    issuance_choice: "Get the card here, right after the enrollment",
    card_title: "Your ID card", card_waiting_data: "Waiting for the card data from the centre",
    card_insert_card: "Insert the blank card in the reader", card_writing: "Writing the card",
    card_keep: "Do not remove the card!", card_retry: "Try another blank card", card_done: "Continue",
    card_skip: "Skip, get the receipt", card_issued: "The card was written and checked.",
    card_msg_waiting_data: "The centre is checking the enrollment and preparing the card data…",
    card_msg_insert_card: "Please insert the blank card in the reader.",
    card_msg_writing: "Writing the card, please wait.",
    card_document: "Card number", receipt_card_issued: "Your ID card was issued at the kiosk.",
    receipt_card_not_issued: "The card was not issued here: it will be sent to you.",
    fields: { full_name: "Full name", date_of_birth: "Date of birth", sex: "Sex",
      nationality: "Nationality", ethnicity: "Ethnicity", religion: "Religion",
      place_of_origin: "Place of origin", permanent_residence: "Permanent residence",
      identifying_marks: "Identifying marks", father: "Father", mother: "Mother",
      spouse: "Spouse", personal_id: "Personal id", old_id_number: "Old CMND number",
      date_of_issue: "Date of issue", date_of_expiry: "Valid until" },
    hints: { come_closer: "Come closer", move_back: "Move back a little",
      face_camera: "Look straight at the camera", straighten_head: "Keep your head straight",
      level_chin: "Keep your chin level", move_left: "Move to your left",
      move_right: "Move to your right", move_up: "Move up a little", move_down: "Move down a little",
      more_light: "More light needed", less_light: "Too much light", even_light: "Uneven light",
      sharp: "Hold still", hold_still: "Hold still", plain_background: "Stand before a plain background",
      one_face: "Only one person in front of the camera", no_face: "Look straight at the camera" },
    fingers: ["", "right thumb", "right index", "right middle", "right ring", "right little",
      "left thumb", "left index", "left middle", "left ring", "left little"],
    errors: { officer_refused: "Officer id or password not recognised.",
      officer_expired: "The officer's credential has expired.",
      supervisor_required: "A supervisor must confirm this exception.",
      citizen_not_found: "This number was not found. Please check it.",
      directory_offline: "The centre cannot be reached. Please try again.",
      directory_timeout: "The centre did not answer. Please try again.",
      device_timeout: "No finger on the sensor. Please try again.",
      invalid_args: "Please check what you entered.", busy: "The kiosk is busy, please wait.",
      duplicate_finger: "This finger was already taken. Please place the finger shown.",
      officer_finger: "This is the officer's finger. The citizen places the finger.",
      card_spoiled: "The card could not be written (pulled out or faulty). That card cannot be used.",
      card_not_blank: "This is not a blank card. Please insert a blank card.",
      no_card: "No card in the reader.",
      card_removed: "The card was pulled out before writing. Please insert it again.",
      issuance_timeout: "The centre has not sent the card data. Your enrollment is submitted; the card will follow.",
      issuance_refused: "The centre did not issue a card for this enrollment. Your enrollment is submitted.",
      issuance_mismatch: "The card data received is not this enrollment's: nothing was written.",
      issuance_disabled: "This kiosk does not issue cards on the spot.",
      interrupted: "The kiosk restarted while writing the card: that card cannot be used." },
    left: "Left hand", right: "Right hand",
  },
};

let state = null;
let lang = "vi";
const $ = (id) => document.getElementById(id);
const t = (k) => T[lang][k] ?? T.vi[k] ?? k;

async function act(name, body) {
  $("error").hidden = true;
  const r = await fetch(`/v1/${name}`, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify(body || {}), credentials: "same-origin",
  });
  const data = await r.json();
  if (!r.ok) { showError(data.error || data); return null; }
  render(data);
  return data;
}

function showError(err) {
  // The citizen reads a sentence in the screen's language; the server's message (English, for
  // the logs) only when the code has none.
  const msg = T[lang].errors[err.code] || err.message || JSON.stringify(err);
  const el = $("error");
  el.textContent = msg;
  el.dataset.code = err.code || "invalid_args";
  el.hidden = false;
}

function translate() {
  document.documentElement.lang = lang;
  document.querySelectorAll("[data-t]").forEach((el) => { el.textContent = t(el.dataset.t); });
  $("lang").textContent = lang === "vi" ? "English" : "Tiếng Việt";
}

function render(s) {
  if (!s || (state && s.seq < state.seq)) return;
  const changed = !state || state.screen !== s.screen;
  state = s;
  document.body.dataset.screen = s.screen;
  document.body.dataset.seq = s.seq;
  if (s.language !== lang) { lang = s.language; translate(); }
  document.querySelectorAll("section[data-screen]").forEach((el) => {
    el.hidden = el.dataset.screen !== s.screen;
  });
  $("cancel").hidden = ["welcome", "card", "receipt"].includes(s.screen);
  window.scrollTo(0, 0);
  $("officer-name").textContent = s.officer ? s.officer.name : "";
  const notice = s.notice ? T[lang]["notice_" + s.notice] : null;
  $("notice").hidden = !notice;
  $("notice").textContent = notice || "";
  $("notice").dataset.code = s.notice || "";
  if (s.error) showError(s.error); else if (changed) $("error").hidden = true;
  $("busy").hidden = !s.busy || s.busy === "card"; // the card screen shows its own progress
  $("busy-text").textContent = s.busy ? t("busy_" + s.busy) : "";
  document.querySelectorAll("main button").forEach((b) => { b.disabled = !!s.busy; });
  if (s.screen === "confirm" && changed) renderCitizen(s.citizen || {});
  if (s.screen === "portrait" && changed) { $("guidance").textContent = t("look_at_camera"); }
  if (s.screen === "fingers") renderFingers(s, changed || s.current_finger !== shownFinger);
  if (s.screen === "review") renderReview(s);
  if (s.screen === "consent") {
    $("issuance-choice").hidden = !s.issuance_offered;
    if (changed) $("issuance").checked = false;
  }
  if (s.screen === "card" && s.card) renderCard(s.card);
  if (s.screen === "receipt" && s.receipt) {
    $("reference").textContent = s.receipt.reference.match(/.{1,4}/g).join(" ");
    $("qr").src = `/v1/receipt.svg?seq=${s.seq}`;
    $("receipt-card").textContent = s.receipt.card ? t("receipt_card_" + s.receipt.card) : "";
  }
  if (changed) { $("skip-panel").hidden = true; $("finger-step").textContent = ""; $("finger-quality").textContent = ""; }
}

// The card: waiting_data -> insert_card -> writing -> issued | failed (docs/local-api.md).
const CARD_STEPS = ["waiting_data", "insert_card", "writing"];
// The encoder's steps while writing (docs/card.md), for the progress bar.
const WRITE_STEPS = ["check_package", "wait_card", "check_blank", "select_application",
  "write:EF.COM", "write:DG1", "write:DG2", "write:DG13", "write:EF.SOD", "put_data:bac_seed",
  "lock", "verify:read"];

function renderCard(c) {
  document.body.dataset.cardStep = c.step;
  const at = CARD_STEPS.indexOf(c.step);
  document.querySelectorAll("#card-steps div").forEach((el) => {
    const i = CARD_STEPS.indexOf(el.dataset.step);
    const done = c.step === "issued" || (at >= 0 && i < at);
    el.classList.toggle("done", done);
    el.classList.toggle("now", i === at);
  });
  const msg = $("card-message");
  msg.classList.toggle("lift", c.step === "issued");
  msg.classList.toggle("failed", c.step === "failed");
  if (c.step === "failed") {
    const err = c.error || {};
    msg.textContent = T[lang].errors[err.code] || err.message || "";
    msg.dataset.code = err.code || "";
  } else {
    msg.textContent = c.step === "issued" ? t("card_issued") : t("card_msg_" + c.step);
    msg.dataset.code = "";
  }
  $("card-keep").hidden = c.step !== "writing";
  $("card-progress").hidden = c.step !== "writing" && c.step !== "issued";
  if (c.step === "issued") $("card-bar").style.width = "100%";
  else if (c.step !== "writing") $("card-bar").style.width = "0";
  $("card-result").textContent = c.result ? `${t("card_document")}: ${c.result.document_number}` : "";
  $("card-retry").hidden = c.step !== "failed";
  $("card-done").hidden = c.step !== "issued" && c.step !== "failed";
  $("card-done").textContent = c.step === "failed" ? t("card_skip") : t("card_done");
}

function onCard(p) {
  const i = WRITE_STEPS.indexOf(p.step);
  if (i >= 0) $("card-bar").style.width = `${Math.round((100 * (i + 1)) / WRITE_STEPS.length)}%`;
  $("card-progress").dataset.step = p.step;
}

function renderCitizen(c) {
  const rows = Object.keys(T.vi.fields).filter((k) => c[k] !== undefined);
  const fixed = ["personal_id", "old_id_number", "date_of_issue", "date_of_expiry"];
  $("citizen").innerHTML = "";
  rows.forEach((k) => {
    const tr = document.createElement("tr");
    const name = document.createElement("td");
    name.textContent = T[lang].fields[k];
    const val = document.createElement("td");
    val.textContent = c[k];
    if (!fixed.includes(k)) {
      const btn = document.createElement("button");
      btn.textContent = t("correct");
      btn.className = "correct";
      btn.dataset.field = k;
      const input = document.createElement("input");
      input.hidden = true;
      input.dataset.field = k;
      input.className = "correction";
      btn.onclick = () => { input.hidden = false; input.focus(); };
      val.append(" ", btn, input);
    }
    tr.append(name, val);
    $("citizen").append(tr);
  });
}

// A schematic of both hands, palms down: left hand fingers 10..6, right hand 1..5
// (ISO/IEC 19794-4 positions); the finger to place is highlighted.
function handsSvg(s) {
  const status = {};
  (s.fingers || []).forEach((f) => { status[f.position] = f.status; });
  const heights = { thumb: 70, index: 120, middle: 135, ring: 125, little: 100 };
  const kinds = ["thumb", "index", "middle", "ring", "little"];
  let out = '<svg viewBox="0 0 900 300" xmlns="http://www.w3.org/2000/svg">';
  const hand = (x0, positions, label) => {
    out += `<rect x="${x0}" y="170" width="330" height="110" rx="40" fill="#ffe0b2" stroke="#8d6e63" stroke-width="3"/>`;
    out += `<text x="${x0 + 165}" y="240" font-size="26" text-anchor="middle">${label}</text>`;
    positions.forEach((p, i) => {
      const kind = kinds[(p - 1) % 5];
      const h = heights[kind];
      const x = x0 + 10 + i * 64;
      let fill = "#ffe0b2";
      if (status[p] === "captured") fill = "#81c784";
      else if (status[p] === "skipped" || status[p] === "exception") fill = "#bdbdbd";
      const current = s.current_finger === p;
      if (current) fill = "#ff9800";
      out += `<rect data-position="${p}" class="finger${current ? " current" : ""}" x="${x}" y="${175 - h}" width="52" height="${h + 20}" rx="24" fill="${fill}" stroke="${current ? "#e65100" : "#8d6e63"}" stroke-width="${current ? 6 : 3}"/>`;
      out += `<text x="${x + 26}" y="${165 - h}" font-size="22" text-anchor="middle">${p}</text>`;
    });
  };
  hand(40, [10, 9, 8, 7, 6], t("left"));
  hand(530, [1, 2, 3, 4, 5], t("right"));
  return out + "</svg>";
}

let shownFinger = null;

function renderFingers(s, fresh) {
  if (fresh) { // a new finger: nothing of the last one's steps stays on screen
    const last = (s.fingers || []).find((f) => f.position === shownFinger);
    if (last && last.status === "captured") {
      const name = T[lang].fingers[last.position];
      $("finger-last").textContent = `✓ ${name[0].toUpperCase()}${name.slice(1)}: ${t("quality")} ${last.quality}`;
    } else if (last) {
      $("finger-last").textContent = "";
    }
    $("finger-step").textContent = "";
    $("finger-step").dataset.step = "";
    $("finger-quality").textContent = "";
    $("skip-panel").hidden = true;
  }
  shownFinger = s.current_finger;
  $("hands").innerHTML = handsSvg(s);
  $("finger-name").textContent = s.current_finger ? T[lang].fingers[s.current_finger] : "";
}

function renderReview(s) {
  const ul = $("review-list");
  ul.innerHTML = "";
  const li = document.createElement("li");
  li.textContent = `${t("portrait")}: ${t("quality")} ${s.portrait ? s.portrait.quality : "-"}`;
  ul.append(li);
  (s.fingers || []).forEach((f) => {
    const el = document.createElement("li");
    el.dataset.position = f.position;
    el.dataset.status = f.status;
    const name = T[lang].fingers[f.position];
    let text = `${name[0].toUpperCase()}${name.slice(1)}: ${t(f.status)}`;
    if (f.quality != null) text += ` (${t("quality")} ${f.quality})`;
    if (f.reason) text += ` — ${t(f.reason)}`;
    el.textContent = text;
    ul.append(el);
  });
}

// A benchmark (bench/station_latency.py) may define window.stationMetrics before the page loads:
// the screen then records when each guidance and preview frame reached the page.
function measure(kind, msg) {
  const m = window.stationMetrics;
  if (!m) return;
  // From the camera frame when known; else from the daemon's message (a separate series).
  if (msg.frame_at) m[kind].push(Date.now() - msg.frame_at * 1000);
  else if (msg.sent_at) (m[kind + "_sent"] = m[kind + "_sent"] || []).push(Date.now() - msg.sent_at * 1000);
}

function onGuidance(g) {
  const hints = g.hints || [];
  const words = hints.map((h) => T[lang].hints[h] || h);
  const el = $("guidance");
  el.textContent = words.length ? words.join(" · ") : t("hold");
  el.dataset.hints = hints.join(" ");
  const box = $("face-box");
  if (g.face && g.frame_size) {
    const [w, h] = g.frame_size;
    // The preview is shown mirrored (style.css) and the box is in the camera's pixels.
    box.style.left = `${(100 * (w - g.face.x - g.face.w)) / w}%`;
    box.style.top = `${(100 * g.face.y) / h}%`;
    box.style.width = `${(100 * g.face.w) / w}%`;
    box.style.height = `${(100 * g.face.h) / h}%`;
    box.classList.toggle("bad", !g.passed);
    box.hidden = false;
  }
  measure("guidance", g);
}

function onProgress(p) {
  const step = $("finger-step");
  step.classList.toggle("lift", p.step === "lift");
  if (p.step === "waiting_for_finger") {
    step.textContent = t("waiting_for_finger") + (p.attempt > 1 ? ` (${t("attempt")} ${p.attempt})` : "");
  } else if (p.step === "lift") {
    step.textContent = t("lift");
    document.body.dataset.lifted = String(Number(document.body.dataset.lifted || 0) + 1);
  } else if (p.step === "quality") {
    $("finger-quality").textContent = `${t("quality")}: ${p.score}`;
  } else if (p.step === "retry") {
    step.textContent = t("retry");
  }
  if (p.step !== "quality") step.dataset.step = p.step;
}

function onPreview(p) {
  $("preview-img").src = `data:image/jpeg;base64,${p.jpeg}`;
  if (p.guidance) onGuidance({ ...p.guidance, frame_at: p.frame_at });
  measure("preview", p);
}

function connect() {
  const es = new EventSource("/v1/events");
  es.addEventListener("state", (e) => render(JSON.parse(e.data).state));
  es.addEventListener("guidance", (e) => onGuidance(JSON.parse(e.data)));
  es.addEventListener("progress", (e) => onProgress(JSON.parse(e.data)));
  es.addEventListener("preview", (e) => onPreview(JSON.parse(e.data)));
  es.addEventListener("card", (e) => onCard(JSON.parse(e.data)));
  es.addEventListener("preview_end", () => { $("preview-img").removeAttribute("src"); $("face-box").hidden = true; });
  es.onopen = () => { document.body.dataset.connected = "1"; };
  es.onerror = () => { document.body.dataset.connected = "0"; };
}

function setup() {
  const keypad = $("keypad");
  ["1", "2", "3", "4", "5", "6", "7", "8", "9", "⌫", "0", "C"].forEach((k) => {
    const b = document.createElement("button");
    b.textContent = k;
    b.onclick = () => {
      const n = $("number");
      if (k === "⌫") n.value = n.value.slice(0, -1);
      else if (k === "C") n.value = "";
      else if (n.value.length < 12) n.value += k;
    };
    keypad.append(b);
  });
  $("lang").onclick = () => act("language", { language: lang === "vi" ? "en" : "vi" });
  $("cancel").onclick = () => act("cancel", {});
  $("begin").onclick = () => act("begin");
  $("sign-in").onclick = () => act("sign-in", { officer_id: $("officer-id").value, secret: $("officer-secret").value })
    .then(() => { $("officer-secret").value = ""; });
  $("lookup").onclick = () => act("lookup", { number: $("number").value });
  $("confirm-back").onclick = () => act("back");
  $("confirm").onclick = () => {
    const corrections = [...document.querySelectorAll("input.correction")]
      .filter((i) => !i.hidden && i.value.trim())
      .map((i) => ({ field: i.dataset.field, requested: i.value.trim() }));
    act("confirm", { corrections });
  };
  $("accept").onclick = () => act("consent", {
    accepted: true, issuance: !$("issuance-choice").hidden && $("issuance").checked });
  $("decline").onclick = () => act("consent", { accepted: false });
  $("portrait").onclick = () => act("portrait");
  $("finger").onclick = () => act("finger");
  $("skip-open").onclick = () => { $("skip-panel").hidden = false; };
  $("skip").onclick = () => {
    const reason = document.querySelector("input[name=reason]:checked").value;
    act("skip", { position: state.current_finger, reason,
      supervisor_id: $("supervisor-id").value, secret: $("supervisor-secret").value })
      .then(() => { $("supervisor-secret").value = ""; });
  };
  $("submit").onclick = () => act("submit");
  $("card-retry").onclick = () => act("card-retry");
  $("card-done").onclick = () => act("card-done");
  $("done").onclick = () => { $("number").value = ""; act("done"); };
  translate();
  connect();
}

setup();
