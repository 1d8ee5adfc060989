// The console's words in English and Chinese. Every key exists in both (a missing one is
// recorded in window.marqueeMissing, which the console's browser test requires to stay empty).
const T = {
  en: {
    title: "Marquee console", login_hint: "Log in with an API token (MARQUEE_TOKEN; the daemon writes an admin token to data/admin.token).",
    token: "API token", login: "Log in", logout: "Log out", bad_token: "This token is not accepted.",
    week: "Week", fleet: "Displays", playlists: "Playlists", alerts: "Alerts", campaigns: "SMS",
    channel: "Channel", channels: "Channels", display: "Display", whole_channel: "the whole channel",
    week_from: "Week from", show: "Show", at: "At", length: "Length", list_view: "As a list",
    frame_at_title: "What a screen shows at a moment", frame_show: "Show the frame", pick_time: "Pick a moment first.",
    no_timeline: "no timeline published for this moment", local_fallback: "(the screen's local fallback)",
    tier_fallback: "fallback", tier_normal: "normal", tier_interrupt: "interrupt", tier_emergency: "emergency", tier_none: "nothing scheduled",
    alert_band: "alert", dst_day: "daylight-saving change", hour_skipped: "this hour is skipped (clocks go forward)", hour_repeated: "this hour happens twice (clocks go back)", nothing: "nothing scheduled: displays show their local fallback",
    replaces: "replaces", playlist: "Playlist", item: "Item", seconds: "Seconds", text: "Text", loop_total: "One loop",
    wd0: "Sun", wd1: "Mon", wd2: "Tue", wd3: "Wed", wd4: "Thu", wd5: "Fri", wd6: "Sat",
    state: "State", last_seen: "Last seen", version: "Timeline (applied/current)", last_ack: "Last alert ack",
    refresh: "Refresh", export_csv: "Export CSV", all_channels: "all channels", all_states: "every state",
    fs_all: "displays", fs_online: "online", fs_offline: "offline", fs_stale: "silent too long", fs_outdated: "old timeline",
    fs_conflict: "id conflict", fs_clock_skew: "clock off", since: "since", conflict: "CONFLICT: two agents use this id",
    clock_off: "clock off", no_displays: "No display has reported yet.", agent_version: "Agent version", started: "Agent started",
    clock: "Clock offset", conflict_at: "Last id conflict", broker: "Broker", plays_per_hour: "Plays per hour, last 24 h", recent_plays: "Recent plays", no_plays: "No plays in the last 24 h.",
    new_playlist: "New playlist", view_form: "Form", view_json: "JSON", check: "Check", save: "Save",
    pending_title: "Waiting for review", proposed_by: "Proposed by", impact: "Changes", publish: "Publish", reject: "Reject",
    reject_why: "Why is it rejected?", show_changes: "Changes", reason_needed: "Write why it is rejected first.", discard_edits: "Discard the edits not saved?", id_taken: "A playlist {id} exists already: choose another id.", published: "Published", rejected_done: "Rejected", proposed: "Proposed for review: another person publishes it", valid: "Valid.", saved: "Saved.",
    no_change: "No screen changes in the next 48 h.", changes: "changes", from: "from", delete: "Delete",
    general: "Playlist", id: "Id (file name)", title_field: "Title", tier: "Tier", weight: "Weight", timezone: "Time zone",
    tier_help_fallback: "Shown only when nothing else is scheduled.",
    tier_help_normal: "Ordinary publicity: shares the screen with the other normal playlists active at the time.",
    tier_help_interrupt: "Replaces normal content while it is active (announcements).",
    tier_help_emergency: "Replaces everything else while it is active.",
    weight_help: "Weight {n}: {n} times the airtime of a weight-1 playlist of the same tier active at the same time.",
    targets: "Where it plays", display_target_help: "A display chosen here gets its own timeline (it replaces its channel's for that display).",
    unknown: "not configured", schedule: "When it plays", no_schedule: "No entry yet: add one.",
    kind_range: "Date range", kind_daypart: "Every day, hours", kind_cron: "Cron", entry_kind: "Kind of entry",
    range_from: "From", range_until: "Until", daypart_start: "From", daypart_end: "To", days: "Days",
    day_mon: "Mon", day_tue: "Tue", day_wed: "Wed", day_thu: "Thu", day_fri: "Fri", day_sat: "Sat", day_sun: "Sun",
    every_day: "every day", crosses_midnight: "(ends the next day)", for: "For", each_lasts: "each lasts",
    next_starts: "Next five starts", items: "Slogans", item_id: "Id", add_item: "Add a slogan",
    move_up: "Move up", move_down: "Move down", duplicate: "Duplicate", chars: "characters",
    text_zh: "Chinese", text_en: "English", screen_preview: "On the screens", preview_needs: "Choose where it plays and write a text to see it on a screen.",
    not_json: "The JSON is not valid", id_needed: "Give the playlist an id first.",
    alert_scope: "Where", scope_hint: "Choose channels or displays; none chosen: every display.", everywhere: "every display", map: "Displays on a map",
    severity: "Severity", expires_in: "Expires in", sms_template: "SMS", no_sms: "No SMS", sms_alert_text: "SMS with the alert's text",
    sms_needs_list: "Choose the recipients' list file for the SMS.", raise: "Raise alert", acks: "Acks", clear: "Clear", approve: "Approve",
    acknowledged: "acknowledged", not_acknowledged: "not acknowledged", delivered: "delivered", failed: "failed", sent: "sent",
    c_name: "Name", send_window: "Send window", c_free_text: "Free text (no template)", c_text: "Text, e.g. {{name}}, welcome…",
    c_text_en: "English text (lang = en)", c_file: "List file (CSV, TXT, XLSX)", c_sheet: "Sheet (optional)", c_paste: "Or paste the list",
    c_create: "Create and estimate", c_progress: "Progress", c_counts: "Sent / delivered / failed", c_out: "out of rotation", c_half_open: "one message at a time after a failure",
    start: "Start", pause: "Pause", resume: "Resume", cancel: "Cancel", recipients: "recipients", segments: "segments",
    billed: "billed by a CN carrier", seconds_to_send: "s to send", rejected: "rejected", download_rejects: "Download rejected rows (CSV)",
    goes_through: "goes through", no_gateway_for_text: "no gateway sends free text: pick a template", templates_only: "templates only", per_minute: "Sent, delivered and failed per minute", approved_by: "approved by",
    as_pending: "waiting for approval", as_scheduled: "scheduled", as_live: "live", as_ended: "ended", as_cleared: "cleared",
    cs_importing: "importing", cs_draft: "draft", cs_pending: "waiting for approval", cs_scheduled: "scheduled", cs_recurring: "recurring",
    cs_missed: "start missed", cs_running: "running", cs_paused: "paused", cs_done: "done", cs_cancelled: "cancelled",
    sev_extreme: "extreme", sev_severe: "severe", sev_moderate: "moderate", sev_minor: "minor", id_col: "ID",
    st_queued: "queued", st_submitting: "submitting", st_sent: "sent", st_delivered: "delivered", st_failed: "failed",
    st_expired: "expired", st_rejected: "rejected", st_unknown: "unknown", st_cancelled: "cancelled",
  },
  zh: {
    title: "Marquee 控制台", login_hint: "使用 API 令牌登录（MARQUEE_TOKEN；守护进程在 data/admin.token 写入管理员令牌）。",
    token: "API 令牌", login: "登录", logout: "退出", bad_token: "令牌无效。",
    week: "排期", fleet: "显示屏", playlists: "播放列表", alerts: "紧急通知", campaigns: "短信",
    channel: "频道", channels: "频道", display: "显示屏", whole_channel: "整个频道",
    week_from: "起始日期", show: "查看", at: "时间", length: "时长", list_view: "列表视图",
    frame_at_title: "某一时刻屏幕显示的内容", frame_show: "显示画面", pick_time: "请先选择时间。",
    no_timeline: "该时刻没有已发布的时间表", local_fallback: "（屏幕本地备用内容）",
    tier_fallback: "备用", tier_normal: "普通", tier_interrupt: "插播", tier_emergency: "紧急", tier_none: "无排期",
    alert_band: "紧急通知", dst_day: "夏令时切换", hour_skipped: "这一小时被跳过（时钟拨快）", hour_repeated: "这一小时出现两次（时钟拨慢）", nothing: "无排期：显示屏播放本地备用内容",
    replaces: "取代", playlist: "节目单", item: "条目", seconds: "秒数", text: "内容", loop_total: "一轮时长",
    wd0: "周日", wd1: "周一", wd2: "周二", wd3: "周三", wd4: "周四", wd5: "周五", wd6: "周六",
    state: "状态", last_seen: "最近上报", version: "时间表（已应用/当前）", last_ack: "最近通知确认",
    refresh: "刷新", export_csv: "导出 CSV", all_channels: "全部频道", all_states: "全部状态",
    fs_all: "显示屏", fs_online: "在线", fs_offline: "离线", fs_stale: "长时间无上报", fs_outdated: "时间表过期",
    fs_conflict: "编号冲突", fs_clock_skew: "时钟偏差", since: "自", conflict: "冲突：两个终端使用同一编号",
    clock_off: "时钟偏差", no_displays: "还没有显示屏上报。", agent_version: "终端版本", started: "终端启动",
    clock: "时钟偏差", conflict_at: "最近编号冲突", broker: "消息服务器", plays_per_hour: "最近 24 小时每小时播放次数", recent_plays: "最近播放", no_plays: "最近 24 小时没有播放记录。",
    new_playlist: "新建播放列表", view_form: "表单", view_json: "JSON", check: "校验", save: "保存",
    pending_title: "待审核", proposed_by: "提交人", impact: "影响", publish: "发布", reject: "退回",
    reject_why: "退回原因？", show_changes: "查看修改", reason_needed: "请先填写退回原因。", discard_edits: "放弃未保存的修改？", id_taken: "已存在播放列表 {id}：请换一个编号。", published: "已发布", rejected_done: "已退回", proposed: "已提交审核：须由另一人发布", valid: "校验通过。", saved: "已保存。",
    no_change: "未来 48 小时内没有屏幕变化。", changes: "变更", from: "自", delete: "删除",
    general: "播放列表", id: "编号（文件名）", title_field: "标题", tier: "级别", weight: "权重", timezone: "时区",
    tier_help_fallback: "仅在没有其他排期时显示。",
    tier_help_normal: "日常宣传：与同时段其他普通播放列表分享屏幕。",
    tier_help_interrupt: "生效期间取代普通内容（通知公告）。",
    tier_help_emergency: "生效期间取代其他所有内容。",
    weight_help: "权重 {n}：播放时长为同时段同级别权重 1 的播放列表的 {n} 倍。",
    targets: "播放位置", display_target_help: "在此选择的显示屏使用自己的时间表（取代其频道的时间表）。",
    unknown: "未配置", schedule: "播放时间", no_schedule: "还没有时间条目：请添加。",
    kind_range: "日期范围", kind_daypart: "每天时段", kind_cron: "Cron 表达式", entry_kind: "条目类型",
    range_from: "开始", range_until: "结束", daypart_start: "从", daypart_end: "到", days: "星期",
    day_mon: "一", day_tue: "二", day_wed: "三", day_thu: "四", day_fri: "五", day_sat: "六", day_sun: "日",
    every_day: "每天", crosses_midnight: "（次日结束）", for: "持续", each_lasts: "每次持续",
    next_starts: "接下来五次开始", items: "标语", item_id: "编号", add_item: "添加标语",
    move_up: "上移", move_down: "下移", duplicate: "复制", chars: "字",
    text_zh: "中文", text_en: "英文", screen_preview: "屏幕效果", preview_needs: "选择播放位置并填写内容后即可预览屏幕效果。",
    not_json: "JSON 格式有误", id_needed: "请先填写播放列表编号。",
    alert_scope: "范围", scope_hint: "选择频道或显示屏；不选则为全部显示屏。", everywhere: "全部显示屏", map: "显示屏地图",
    severity: "严重程度", expires_in: "有效期", sms_template: "短信", no_sms: "不发短信", sms_alert_text: "短信发送通知内容",
    sms_needs_list: "请选择短信收件人名单文件。", raise: "发布通知", acks: "确认", clear: "撤销", approve: "批准",
    acknowledged: "已确认", not_acknowledged: "未确认", delivered: "已送达", failed: "失败", sent: "已发送",
    c_name: "名称", send_window: "发送时段", c_free_text: "自由文本（不用模板）", c_text: "短信内容，如 {{name}}您好…",
    c_text_en: "英文内容（lang = en）", c_file: "名单文件（CSV、TXT、XLSX）", c_sheet: "工作表（可选）", c_paste: "或粘贴名单",
    c_create: "创建并估算", c_progress: "进度", c_counts: "已发送 / 已送达 / 失败", c_out: "已停用", c_half_open: "故障后逐条试发",
    start: "开始", pause: "暂停", resume: "继续", cancel: "取消", recipients: "位收件人", segments: "条短信",
    billed: "条（运营商计费）", seconds_to_send: "秒发完", rejected: "行被拒绝", download_rejects: "下载被拒绝的行（CSV）",
    goes_through: "发送通道", no_gateway_for_text: "没有通道可发送自由文本：请选择模板", templates_only: "仅限模板", per_minute: "每分钟发送、送达和失败数", approved_by: "批准人",
    as_pending: "待批准", as_scheduled: "已排定", as_live: "生效中", as_ended: "已结束", as_cleared: "已撤销",
    cs_importing: "导入中", cs_draft: "草稿", cs_pending: "待批准", cs_scheduled: "已排定", cs_recurring: "周期发送",
    cs_missed: "错过开始时间", cs_running: "发送中", cs_paused: "已暂停", cs_done: "已完成", cs_cancelled: "已取消",
    sev_extreme: "特别严重", sev_severe: "严重", sev_moderate: "较重", sev_minor: "一般", id_col: "编号",
    st_queued: "排队中", st_submitting: "提交中", st_sent: "已发送", st_delivered: "已送达", st_failed: "失败",
    st_expired: "已过期", st_rejected: "被拒绝", st_unknown: "状态未知", st_cancelled: "已取消",
  },
};

window.marqueeMissing = new Set();
let current = localStorage.getItem("marquee-lang") || (navigator.language.startsWith("zh") ? "zh" : "en");
const listeners = [];

export const lang = () => current;

// The word for `key` in the current language.
export function t(key) {
  const v = T[current][key];
  if (v === undefined) { window.marqueeMissing.add(`${current}:${key}`); return key; }
  return v;
}

// Whether `key` has words.
export const has = key => T[current][key] !== undefined;

// A text map ({zh, en, …}) in the current language, or the first it has.
export const textOf = m => m?.[current] ?? Object.values(m || {})[0] ?? "";

export function setLang(l) {
  current = l;
  localStorage.setItem("marquee-lang", l);
  applyLang();
  listeners.forEach(f => f());
}

export const onLang = f => listeners.push(f);

// Puts the words into the static page (text, placeholders, accessible names).
export function applyLang() {
  document.documentElement.lang = current;
  document.title = t("title");
  document.querySelectorAll("[data-i18n]").forEach(e => e.textContent = t(e.dataset.i18n));
  document.querySelectorAll("[data-i18n-ph]").forEach(e => e.placeholder = t(e.dataset.i18nPh));
  document.querySelectorAll("[data-i18n-label]").forEach(e => e.setAttribute("aria-label", t(e.dataset.i18nLabel)));
  document.getElementById("lang").textContent = current === "en" ? "中文" : "English";
}

// Both languages have the same keys (checked by the browser test through this).
export const keysDiffer = () => {
  const a = Object.keys(T.en), b = Object.keys(T.zh);
  return [...a.filter(k => !b.includes(k)).map(k => "zh:" + k), ...b.filter(k => !a.includes(k)).map(k => "en:" + k)];
};
